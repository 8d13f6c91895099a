"""Benchmarks of the DSM, each measured beside its baseline in the same run (``dsm bench``).

The shared harness:

- ``common``: progress lines, the environment, sessions (log directory, SIGTERM), the rows and
  format of the combined table, ``--json``/``--plot`` output.
- ``procs``: starting and stopping the directory, the baselines' servers, node workers and other
  driven children, with deadlines.
- ``worker``: a node process driven by a benchmark (attaches, then runs page commands).
- ``echo``: the bare pyzmq baselines' far end: a ROUTER echo (round trips) or a PULL (streams).
- ``dirclient``: a client that speaks the node protocol straight to a directory.
- ``plot``: the PNG (matplotlib, imported only there).

One module per benchmark: ``fault``, ``lock``, ``scan``, ``directory``, ``workloads``, ``jacobi``;
``suite`` runs them all (``dsm bench``). ``fault`` is the command; its measurements are
``fault_measure``'s, its rows, result and table ``fault_rows``'s.
"""
