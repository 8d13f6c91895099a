"""A client that loads the directory with page requests: ``python -m dsm.bench.dirclient
DIRECTORY NAME``.

It speaks the node protocol (``dsm.protocol``) straight to the directory over ZeroMQ, with no
agent and no memory behind it: a DEALER with identity NAME says Hello and waits for Welcome, and,
if the directory is a distributed manager's coordinator, one DEALER per other shard does the same
(as an agent's ``dsm.agent.links`` does; each request goes to its page's shard); then it prints
``{"ok": true, ...}`` and runs commands, one JSON object a line on stdin, one JSON reply a line on
stdout (as ``dsm.bench.worker`` does):

    {"op": "acquire", "first": P, "count": N, "in_flight": K}
        ask for read copies of pages P .. P+N-1 (``Acquire(page, 1, write=False,
        have_copy=False)``), keeping K requests outstanding, and read every Grant; reply with
        the first send and the last answer (CLOCK_MONOTONIC, comparable across processes) and
        each request's latency, in ns

Every Grant must be a read grant of one requested page, unanswered so far. While it waits for
commands it sends heartbeats, so that the directory does not declare it dead.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
import traceback
from collections import deque

import zmq

from dsm import protocol as p
from dsm.agent.links import resolve_endpoint
from dsm.core.shards import shard_of
from dsm.directory.sessions import new_random_id
from dsm.liveness import HEARTBEAT_INTERVAL_S

#: how long the directory may take to answer Hello, and any one request
ANSWER_TIMEOUT_S = 10.0


class Client:
    def __init__(self, directory: str, name: str):
        self.ctx = zmq.Context()
        incarnation = new_random_id()
        self.identity = p.identity(name, incarnation)
        self.hello = p.Hello(name, os.getpid(), incarnation)
        #: answers received from several shards, not handed out yet
        self._queued: deque[list] = deque()
        self.sock = self._join(directory)
        welcome = self.welcome
        self.page_size = welcome.page_size
        self.num_pages = welcome.size // welcome.page_size
        #: one DEALER per shard, the coordinator's first
        self.socks = [self.sock] + [self._join(resolve_endpoint(e, directory))
                                    for e in welcome.shards[1:]]

    def _join(self, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.connect(endpoint)
        sock.send_multipart(p.encode(self.hello))
        if not sock.poll(int(ANSWER_TIMEOUT_S * 1000)):
            raise TimeoutError(f"{endpoint} did not answer Hello within {ANSWER_TIMEOUT_S} s")
        welcome, _ = p.decode(sock.recv_multipart(), 0, p.Direction.TO_NODE)
        if not isinstance(welcome, p.Welcome):
            raise RuntimeError(f"expected Welcome from {endpoint}, got {welcome!r}")
        self.welcome = getattr(self, "welcome", welcome)
        return sock

    def heartbeat(self) -> None:
        for sock in self.socks:
            sock.send_multipart(p.encode(p.Heartbeat()))

    def op_acquire(self, first: int, count: int, in_flight: int) -> dict:
        if not (0 <= first and first + count <= self.num_pages):
            raise ValueError(f"pages {first}..{first + count - 1} are outside the region of "
                             f"{self.num_pages} pages")
        requests = [p.encode(p.Acquire(first + i, 1, False, False)) for i in range(count)]
        shards = len(self.socks)
        to = [self.socks[shard_of(first + i, shards)] for i in range(count)]
        sent_at = [0] * count
        latency = [0] * count
        sock, pc, page_size = self.sock, time.monotonic_ns, self.page_size
        # one directory: a blocking receive with a deadline, no poll call per answer
        sock.setsockopt(zmq.RCVTIMEO, int(ANSWER_TIMEOUT_S * 1000))
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        sent = answered = 0
        start = pc()
        while answered < count:
            while sent < count and sent - answered < in_flight:
                sent_at[sent] = pc()
                to[sent].send_multipart(requests[sent])
                sent += 1
            try:
                frames = sock.recv_multipart() if shards == 1 else self._recv_any(poller)
            except zmq.Again:
                raise TimeoutError(f"no answer from the directory within {ANSWER_TIMEOUT_S} s "
                                   f"({answered} of {count} answered)") from None
            now = pc()
            msg, _ = p.decode(frames, page_size, p.Direction.TO_NODE)
            if isinstance(msg, p.Heartbeat):  # the directory answers our heartbeats
                continue
            i = getattr(msg, "page", -1) - first
            if (not isinstance(msg, p.Grant) or msg.write or msg.count != 1
                    or not 0 <= i < sent or latency[i]):
                raise RuntimeError(f"unexpected answer {msg!r} to read requests for pages "
                                   f"{first}..{first + count - 1}")
            latency[i] = now - sent_at[i]
            answered += 1
        return {"start_ns": start, "end_ns": pc(), "latency_ns": latency}

    def _recv_any(self, poller: zmq.Poller) -> list:
        """The next answer from any shard (zmq.Again at the deadline)."""
        if not self._queued:
            ready = poller.poll(int(ANSWER_TIMEOUT_S * 1000))
            if not ready:
                raise zmq.Again()
            for sock, _ in ready:  # everything queued, one poll for it all
                while sock.get(zmq.EVENTS) & zmq.POLLIN:
                    self._queued.append(sock.recv_multipart())
        return self._queued.popleft()

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)
        self.ctx.term()


def main(argv: list[str] | None = None) -> int:
    directory, name = (sys.argv[1:] if argv is None else argv)[:2]
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by accident goes to the log, not to the protocol
    try:
        client = Client(directory, name)
    except Exception:
        out.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
        return 1
    out.write(json.dumps({"ok": True, "pid": os.getpid()}) + "\n")
    stdin = sys.stdin.fileno()
    buf = b""
    try:
        while True:
            ready, _, _ = select.select([stdin], [], [], HEARTBEAT_INTERVAL_S)
            if not ready:
                client.heartbeat()
                continue
            chunk = os.read(stdin, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                request = json.loads(line)
                op = request.pop("op")
                if op == "quit":
                    return 0
                try:
                    reply = {"ok": True, **getattr(client, f"op_{op}")(**request)}
                except Exception:
                    reply = {"ok": False, "error": traceback.format_exc()}
                out.write(json.dumps(reply) + "\n")
                client.heartbeat()
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
