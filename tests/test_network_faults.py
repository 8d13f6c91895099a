"""A cluster on namespace hosts whose network loses packets (iptables' ``statistic`` match: this
kernel has no netem) runs the randomized coherence test of ``test_random_coherence`` and its
linearizability check: nothing lost, nobody declared dead while TCP's retransmissions stall its
links for less than the deadlines. Skipped, with the reason, where namespace hosts or iptables
are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time


import pytest

from dsm.hosts import network
from tests.cluster import Directory, NodeProcess
from tests.test_random_coherence import check_random_histories

NODES = 3
#: the shares of packets each node host drops on the way in, and each actor's operations at
#: that rate: 10 to 20 s of a run each, on this 2-core machine (the README's test command within
#: its 15 minutes)
OPS_UNDER_LOSS = {0.05: 1000, 0.10: 500, 0.20: 300}
#: the rates the suite runs. At 20% a TCP connection stalls in retransmission backoff for
#: seconds at a time (retransmission backoff doubles from at least 200 ms); in 3 of 14 runs on
#: this machine a stall outlasted the cut-off (3.5 s) and cut a node off (the directory silent to
#: it that long), as the deadlines say it must. That rate runs on demand:
#: DSM_TEST_LOSS_RATES=0.05,0.2. The suite runs 10% only (5% as well took 13 s more of its
#: 15-minute budget, and asks less of the links)
LOSS_RATES = tuple(float(r) for r in os.environ.get("DSM_TEST_LOSS_RATES", "0.10").split(","))
#: a lossy run's deadline: TCP backs off for seconds at a time at 20% loss
LOSSY_RUN_TIMEOUT_S = 240.0
#: of the operations, at least this share must have needed the network (the history would
#: prove little otherwise); lower than on a fast network, where pages move more often
MIN_REQUEST_FRACTION = 0.03
IPTABLES_TIMEOUT_S = 10.0


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install iptables)"
    return None


def _drop_share(namespace: str, probability: float) -> None:
    """Drop ``probability`` of the packets that reach the host ``namespace``."""
    subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-A", "INPUT", "-m",
                    "statistic", "--mode", "random", "--probability", str(probability), "-j",
                    "DROP"], check=True, capture_output=True, timeout=IPTABLES_TIMEOUT_S)


@pytest.fixture
def lossy_cluster(tmp_path):
    """``start(loss)``: a directory host and NODES node hosts on one bridge, each node host
    dropping ``loss`` of its incoming packets; everything torn down after the test."""
    why = _unavailable()
    if why:
        print(f"skipping the lossy-network tests: {why}")
        pytest.skip(why)
    network.sweep_stale()
    net = network.Network()
    procs: list = []

    def start(loss: float):
        net.create()
        hosts = [net.add_host(name) for name in ("directory", *(f"n{i}" for i in range(NODES)))]
        net.write_hosts()
        directory = Directory(tmp_path, "tcp", host=hosts[0].address,
                              prefix=["ip", "netns", "exec", hosts[0].namespace])
        procs.append(directory)
        for host in hosts[1:]:
            _drop_share(host.namespace, loss)
        nodes = [NodeProcess(directory.endpoint, host.name, tmp_path, wait=False,
                             prefix=["ip", "netns", "exec", host.namespace])
                 for host in hosts[1:]]
        procs.extend(nodes)
        for n in nodes:
            n.wait_attached(60)
        return directory, nodes

    yield start
    for proc in reversed(procs):
        proc.kill()
    net.destroy()
    assert net.leftover == [], "processes survived the teardown"


@pytest.mark.timeout(420)
@pytest.mark.parametrize("loss", LOSS_RATES, ids=[f"{int(r * 100)}%-loss" for r in LOSS_RATES])
def test_a_lossy_network_loses_nothing_and_kills_nobody(lossy_cluster, tmp_path, loss):
    directory, nodes = lossy_cluster(loss)
    t0 = time.monotonic()
    # a slow network lets each node do more of its operations on pages it holds (the
    # pages still move: at least one operation in MIN_REQUEST_FRACTION needs the network)
    check_random_histories(nodes, tmp_path, write_fraction=0.5,
                           ops=OPS_UNDER_LOSS.get(loss, min(OPS_UNDER_LOSS.values())),
                           timeout_s=LOSSY_RUN_TIMEOUT_S,
                           min_request_fraction=MIN_REQUEST_FRACTION)
    print(f"{loss:.0%} loss: {NODES} nodes ran the random history in "
          f"{time.monotonic() - t0:.1f} s")
    log = directory.log_path.read_text()
    assert "declared dead" not in log, log[-3000:]
    assert "LOST" not in log, log[-3000:]


