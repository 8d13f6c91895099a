"""Benchmarks of the DSM, each measured beside its baseline in the same run (``dsm bench``).

- ``worker``: a node process driven by the benchmark (attaches, then runs page commands).
- ``echo``: a bare pyzmq ROUTER echo server, the round-trip baseline.
- ``procs``: starting and stopping the directory, echo and worker processes with deadlines.
- ``fault``: the fault-latency benchmark, ``dsm bench fault``.
"""
