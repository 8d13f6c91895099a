"""The baselines' far end: ``python -m dsm.bench.echo ENDPOINT`` or ``... --pull ENDPOINT``.

Echo (the round-trip baseline): a bare pyzmq ROUTER that sends every message back to its sender,
as it came (no decoding). It prints ``echo listening on EP`` (the bound endpoint) first.

Pull (the streaming baseline's receiving end): a bare pyzmq PULL that receives streams of frames
without copies (``copy=False``). A stream is a start frame (any bytes, not counted), data frames
(non-empty) and an empty end frame; for each, it prints one JSON line ``{"bytes": B, "frames": F,
"ns": T}``: the data's bytes and frames, T timed from the arrival of the start frame to that of the
end frame. It prints ``pull listening on EP`` first.

Both bind ENDPOINT, stop on SIGTERM, or by themselves when no message came for
``IDLE_TIMEOUT_S`` (a safety net).
"""

from __future__ import annotations

import json
import signal
import sys
import time

import zmq

IDLE_TIMEOUT_S = 300.0


def _echo(sock: zmq.Socket, running) -> None:
    while running():
        if not sock.poll(int(IDLE_TIMEOUT_S * 1000)):
            break
        frames = sock.recv_multipart(copy=False)
        sock.send_multipart(frames, copy=False)


def _pull(sock: zmq.Socket, running) -> None:
    pc = time.perf_counter_ns
    while running():
        if not sock.poll(int(IDLE_TIMEOUT_S * 1000)):
            break
        sock.recv(copy=False)  # the start frame
        t0 = pc()
        nbytes, frames = 0, 0
        while True:
            if not sock.poll(int(IDLE_TIMEOUT_S * 1000)):
                return
            size = len(sock.recv(copy=False))
            if not size:
                break
            nbytes += size
            frames += 1
        ns = pc() - t0
        print(json.dumps({"bytes": nbytes, "frames": frames, "ns": ns}), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pull = "--pull" in args
    if pull:
        args.remove("--pull")
    endpoint = args[0]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL if pull else zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    kind = "pull" if pull else "echo"
    print(f"{kind} listening on {sock.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        (_pull if pull else _echo)(sock, lambda: running)
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
