"""Links that survive the network: a cluster whose TCP connections are reset over and over
(``ss -K``) while its nodes increment shared counters under a lock loses nothing, declares
nobody dead and finishes within a bounded multiple of its reset-free time."""

from __future__ import annotations


import time

import pytest

from tests.cluster import Directory, NodeProcess, environment_without_manager_defaults
from dsm.reliability import SESSION_COUNTERS
from tests.nemesis import Resetter, have_ss_kill

NODES = 3
#: counters, one per page (each increment moves a page between nodes)
COUNTERS = 12
INCREMENTS = 300
#: the dynamic manager's increments: it has no read-ahead and no migratory grant, so each costs
#: it 24 remote faults (a read and a write of each counter's page) where central makes about
#: one; fewer keep its run as long as the others'
DYNAMIC_INCREMENTS = 60
#: a run under resets may take this many times its reset-free time (the issue's bound)
SLOWDOWN_BOUND = 3.0
#: seconds every node's run may take, resets or not
RUN_DEADLINE_S = 120.0
#: how often the counters test resets the connections, and how long it waits for a reset
RESET_PERIOD_S = 0.2
RESET_WAIT_S = 30.0

_WORKLOAD = (
    "import time\n"
    "page_words = node.layout.page_size // 8\n"
    "counters = node.array('{name}', ({counters} * page_words,), np.int64)\n"
    "lock = node.lock('{name}.lock')\n"
    "node.barrier('{name}.start', {nodes}).wait()\n"
    "t0 = time.monotonic()\n"
    "for _ in range({increments}):\n"
    "    with lock:\n"
    "        for c in range({counters}):\n"
    "            counters[c * page_words] += 1\n"
    "node.barrier('{name}.end', {nodes}).wait()\n"
    "elapsed = time.monotonic() - t0\n"
    "values = [int(counters[c * page_words]) for c in range({counters})]\n"
)

MANAGERS = {
    "relay": ["--manager", "relay"],
    "central": ["--manager", "central"],
    "distributed": ["--manager", "distributed", "--shards", "2"],
    "dynamic": ["--manager", "dynamic"],
}


def _run_round(nodes: list[NodeProcess], name: str, increments: int = INCREMENTS) -> float:
    code = _WORKLOAD.format(name=name, counters=COUNTERS, nodes=NODES, increments=increments)
    for n in nodes:
        n.send(code, "[elapsed, values]")
    results = [n.wait(RUN_DEADLINE_S) for n in nodes]
    for _, values in results:
        assert values == [NODES * increments] * COUNTERS, values
    return max(elapsed for elapsed, _ in results)


#: the reset periods each manager runs under in the suite: one each (the fastest for central
#: and the relay, the slowest for distributed, the one between for the dynamic manager, slower
#: to run); .ci/slow-check runs the others of PERIODS_S too
SUITE_PERIODS_S = {"central": 0.25, "distributed": 1.0, "dynamic": 0.5, "relay": 0.25}
PERIODS_S = {"central": [1.0, 0.25], "distributed": [1.0, 0.25], "dynamic": [0.5],
             "relay": [0.25]}
RUNS = [(m, period) if period == SUITE_PERIODS_S[m] else
        pytest.param(m, period, marks=pytest.mark.slow)
        for m in sorted(MANAGERS) for period in PERIODS_S[m]]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("manager,period_s", RUNS)
def test_resets_lose_nothing_and_kill_nobody(tmp_path, manager, period_s):
    why = have_ss_kill()
    if why:
        pytest.skip(why)
    env = environment_without_manager_defaults()
    shards = 2 if manager == "distributed" else 1
    directory = Directory(tmp_path, "tcp", extra=MANAGERS[manager] if shards == 1 else [],
                          shards=shards)
    nodes: list[NodeProcess] = []
    try:
        nodes = [NodeProcess(directory.endpoint, f"n{i}", tmp_path, env=env, wait=False)
                 for i in range(NODES)]
        for n in nodes:
            n.wait_attached()
        increments = DYNAMIC_INCREMENTS if manager == "dynamic" else INCREMENTS
        quiet_before_s = _run_round(nodes, "quiet", increments)
        roots = lambda: [directory.proc.pid, *(n.proc.pid for n in nodes)]  # noqa: E731
        with Resetter(roots, period_s) as resetter:
            reset_s = _run_round(nodes, "reset", increments)
        # The reset-free time is the slower of a round before and one after: how often the pages
        # move depends on how the lock happens to pass, and one quiet round in CI ran 5x faster
        # than usual (0.30 s against 1.6) because a node took the lock many times in a row
        quiet_s = max(quiet_before_s, _run_round(nodes, "quiet-after", increments))
        print(f"{manager}, a reset every {period_s} s: {resetter.resets} resets, "
              f"{reset_s:.2f} s against {quiet_s:.2f} s without ({reset_s / quiet_s:.2f}x)")
        assert resetter.resets >= 1, "no connection was reset: the test tested nothing"
        log = directory.log_path.read_text()
        assert "declared dead" not in log, log[-3000:]
        assert "LOST" not in log, log[-3000:]
        assert reset_s <= SLOWDOWN_BOUND * max(quiet_s, period_s), (reset_s, quiet_s)
    finally:
        for n in nodes:
            n.close()
        directory.kill()


def test_a_lost_write_grant_is_replayed_and_never_ends_in_zeros(tmp_path):
    """The chain a code review traced to silent zeros: a write Grant lost in a reset, the
    requester's timeout, a second request answered "you own it", a hole in a page the core
    thought held, a guessed discard, zeros everywhere. Here a proxy loses the Grant on purpose:
    the session replays it, the write lands, and every node reads it."""
    from dsm import protocol as p
    from dsm.reliability import has_session, strip
    from tests.nemesis import DroppingProxy

    dropped: list = []

    def first_write_grant(frames) -> bool:
        body = strip(frames) if frames and has_session(frames[0]) else frames
        try:
            msg, _ = p.decode(body, 4096, p.Direction.TO_NODE)
        except p.ProtocolError:
            return False
        if isinstance(msg, p.Grant) and msg.write and not dropped:
            dropped.append(msg)
            return True
        return False

    env = environment_without_manager_defaults()
    directory = Directory(tmp_path, "tcp", extra=["--manager", "relay"])
    writer = reader = None
    try:
        with DroppingProxy(directory.endpoint, first_write_grant) as proxy:
            writer = NodeProcess(proxy.endpoint, "writer", tmp_path, env=env)
            reader = NodeProcess(directory.endpoint, "reader", tmp_path, env=env)
            writer.run("x = node.array('lost.grant', (512,), np.int64); x[0] = 42")
            assert proxy.dropped == 1, "no write Grant was dropped: the test tested nothing"
            assert writer.run("", "int(x[0])") == 42
            assert reader.run("y = node.array('lost.grant', (512,), np.int64)", "int(y[0])") == 42
            assert writer.run("x[1] = 7", "int(x[0]) + int(x[1])") == 49
            writer.close()  # its leave goes through the proxy too
        log = directory.log_path.read_text()
        assert "declared dead" not in log and "LOST" not in log, log[-3000:]
    finally:
        for n in (writer, reader):
            if n is not None:
                n.close()
        directory.kill()


def test_a_nodes_counters_and_metrics_say_what_the_sessions_did(tmp_path):
    """After resets, a node's stats (dsm top, --metrics) count the session's work: messages
    replayed, duplicates and gaps dropped, acknowledgements sent alone."""
    why = have_ss_kill()
    if why:
        pytest.skip(why)
    env = environment_without_manager_defaults()
    directory = Directory(tmp_path, "tcp", extra=["--manager", "central"])
    nodes = []
    try:
        nodes = [NodeProcess(directory.endpoint, f"c{i}", tmp_path, env=env) for i in range(2)]
        roots = lambda: [directory.proc.pid, *(n.proc.pid for n in nodes)]  # noqa: E731
        with Resetter(roots, RESET_PERIOD_S) as resetter:
            # rounds of the workload until a reset came (one round can take less than a period)
            deadline = time.monotonic() + RESET_WAIT_S
            rounds = 0
            while not resetter.resets and time.monotonic() < deadline:
                for n in nodes:
                    n.send(_WORKLOAD.format(name=f"counted{rounds}", counters=4, nodes=2,
                                            increments=150), "values")
                for n in nodes:
                    assert n.wait(RUN_DEADLINE_S) == [300] * 4
                rounds += 1
        assert resetter.resets >= 1, f"no connection reset in {rounds} rounds"
        # the counters reach the node's stats with its next report (every second)
        counters = nodes[0].run("import time; time.sleep(1.5)", "node.stats()['counters']")
        assert counters.get("session_bare_acks", 0) > 0, counters
        assert all(f"session_{name}" in counters for name in SESSION_COUNTERS), counters
    finally:
        for n in nodes:
            n.close()
        directory.kill()
