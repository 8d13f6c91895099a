"""The round-trip baseline's far end: ``python -m dsm.bench.echo ENDPOINT``.

A bare pyzmq ROUTER that sends every message back to its sender, as it came (no decoding). It
binds ENDPOINT and prints ``echo listening on EP`` (the bound endpoint) as its first stdout line.
It stops on SIGTERM, or by itself when no message came for ``IDLE_TIMEOUT_S`` (a safety net)."""

from __future__ import annotations

import signal
import sys

import zmq

IDLE_TIMEOUT_S = 300.0


def main(argv: list[str] | None = None) -> int:
    endpoint = (argv or sys.argv[1:])[0]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    print(f"echo listening on {sock.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while running:
            if not sock.poll(int(IDLE_TIMEOUT_S * 1000)):
                break
            frames = sock.recv_multipart(copy=False)
            sock.send_multipart(frames, copy=False)
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
