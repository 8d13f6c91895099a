"""Clusters on namespace hosts, started from the project's own docker-compose.yml by the runner
(``dsm/hosts``): the compose file's commands and environment are what runs, one network
namespace per service replica, joined by a bridge. Skipped, with the reason, where network
namespaces cannot be made (not root, no iproute2)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsm.hosts import network
from dsm.hosts.compose import load
from dsm.hosts.runner import HOSTEXEC, Cluster, Instance
from dsm.managers import SHARDS_ENV

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
RESULT_PREFIX = "DSM-DEMO-RESULT "
#: the directory declares a silent node dead after NODE_TIMEOUT_S; the agent fails a page
#: request unanswered for REQUEST_TIMEOUT_S
from dsm.liveness import NODE_TIMEOUT_S, REQUEST_TIMEOUT_S  # noqa: E402


def _namespaces_unavailable() -> str | None:
    """Why namespace hosts cannot be made here (None: they can): one host is made, given an
    /etc/hosts, and runs a command the way the runner starts every replica."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"{network.PREFIX}{os.getpid()}xprobe-probe"
    try:
        network.ip("netns", "add", name)
        (network.ETC_NETNS / name).mkdir(parents=True, exist_ok=True)
        (network.ETC_NETNS / name / "hosts").write_text("127.0.0.1\tlocalhost\n")
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-I", HOSTEXEC,
                               "probe", "true"], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            return f"cannot run a command in a namespace host: {done.stderr.strip()}"
    except (network.NetworkError, OSError) as exc:
        return f"cannot create a namespace host: {exc}"
    finally:
        network.delete_namespace(name)
    return None


@pytest.fixture(scope="module")
def namespaces():
    why = _namespaces_unavailable()
    if why:
        print(f"skipping namespace-host cluster tests: {why}")
        pytest.skip(why)
    network.sweep_stale()  # runs left by test processes that were killed


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _environment_without_shards() -> dict[str, str]:
    """This environment without the suite's $DSM_SHARDS: a test says its cluster's shape (a
    sharded one sets DSM_SHARDS and the manager replicas, DSM_MANAGERS, together); the suite's
    $DSM_MANAGER still applies."""
    return {k: v for k, v in os.environ.items() if k != SHARDS_ENV}


@pytest.fixture
def hosts(namespaces, tmp_path):
    """``start(env, scale)``: the compose project on namespace hosts; torn down after the test,
    which then checks that nothing of the run is left."""
    clusters: list[Cluster] = []
    links_before = _root_links()

    def start(env: dict[str, str], scale: dict[str, int]) -> Cluster:
        project = load(COMPOSE_FILE, {**_environment_without_shards(), **env}, scale)
        cluster = Cluster(project, log_dir=tmp_path / "hosts")
        clusters.append(cluster)
        cluster.up()
        return cluster

    yield start
    for cluster in clusters:
        cluster.down()
        run_id = cluster.network.run_id
        assert network.list_runs().get(run_id) is None, f"namespaces of run {run_id} left"
        assert cluster.network.leftover == [], "processes survived the teardown"
        for inst in cluster.instances.values():
            assert inst.proc.poll() is not None, f"{inst.name} still runs"
            assert network.pids_in(inst.host.namespace) == []
    assert _root_links() == links_before, "links were added to the root namespace"


def result_of(inst: Instance) -> dict:
    for line in reversed(inst.lines):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise AssertionError(f"{inst.name} printed no result line:\n" + "\n".join(inst.lines[-30:]))


def output_of(inst: Instance) -> str:
    return "\n".join(inst.lines)


@pytest.mark.timeout(90)
def test_three_nodes_on_four_hosts_compute_together(hosts):
    # the compose file's default workload (jacobi): every node reads rows its neighbours wrote
    cluster = hosts({"DSM_NODES": "3"}, {"node": 3})
    (directory,) = cluster.replicas("directory")
    nodes = cluster.replicas("node")
    assert len({i.host.address for i in [directory, *nodes]}) == 4
    codes = cluster.wait_all(nodes, 60)
    assert codes == {"node-1": 0, "node-2": 0, "node-3": 0}
    results = [result_of(n) for n in nodes]
    assert sorted(r["rank"] for r in results) == [0, 1, 2]
    assert all(r["match"] for r in results), results
    assert len({r["digest"] for r in results}) == 1
    assert all(r["digest"] == r["expected"] for r in results)
    # data written on other hosts came over the network
    assert all(r["stats"]["counters"].get("pages_in", 0) > 0 for r in results)
    for n in nodes:
        assert "verdict: OK" in output_of(n)  # the entrypoint ran dsm doctor first


GATHER = {"DSM_NODES": "3", "DSM_WORKLOAD": "gather",
          "DSM_WORKLOAD_ARGS": "--pages 4 --wait-timeout 60"}


@pytest.mark.timeout(90)
def test_a_distributed_manager_on_three_hosts_serves_three_nodes(hosts):
    # the compose file with DSM_SHARDS=3: the directory is shard 0 and two manager replicas,
    # each on a host of its own, join it as shards 1 and 2 and tell the nodes their addresses;
    # a grid of 768 x 768 float64 (4.5 MiB) has pages in every shard's stripes
    cluster = hosts({"DSM_NODES": "3", "DSM_SHARDS": "3", "DSM_MANAGERS": "2",
                     "DSM_WORKLOAD_ARGS": "--size 768 --iterations 4"}, {"node": 3})
    (directory,) = cluster.replicas("directory")
    managers = cluster.replicas("manager")
    nodes = cluster.replicas("node")
    assert len({i.host.address for i in [directory, *managers, *nodes]}) == 6
    codes = cluster.wait_all(nodes, 75)
    assert codes == {"node-1": 0, "node-2": 0, "node-3": 0}, {
        n.name: output_of(n)[-2000:] for n in [directory, *managers, *nodes]}
    results = [result_of(n) for n in nodes]
    assert all(r["match"] for r in results), results
    assert len({r["digest"] for r in results}) == 1
    assert "directory listening on tcp://0.0.0.0:7400" in output_of(directory)
    # each shard told the nodes the address of its own host
    assert sorted(re.search(rf"shard ([12]) of 3 listening on tcp://0.0.0.0:7400 \(nodes reach "
                            rf"it at tcp://{re.escape(m.host.address)}:7400\)",
                            output_of(m)).group(1) for m in managers) == ["1", "2"]


@pytest.mark.timeout(90)
def test_a_keyed_cluster_on_namespace_hosts_computes_and_refuses_an_open_node(hosts, tmp_path):
    # the compose file mounts DSM_KEYS into every service: here the runner hands the hosts the
    # keys directory itself; the nodes join with CURVE and compute together
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "dsm", "keygen", str(keys)], check=True,
                   capture_output=True, timeout=30)
    cluster = hosts({"DSM_NODES": "2", "DSM_KEYS": str(keys)}, {"node": 2})
    nodes = cluster.replicas("node")
    codes = cluster.wait_all(nodes, 60)
    assert set(codes.values()) == {0}, codes
    assert all(result_of(n)["match"] for n in nodes)
    (directory,) = cluster.replicas("directory")
    assert "runs OPEN" not in output_of(directory)
    # a node without the keys, on its own host, is refused: it says authentication failed
    intruder = cluster.project.services["node"]
    open_env = {**intruder.environment, "DSM_KEYS": ""}
    project = type(cluster.project)(cluster.project.path, {
        **cluster.project.services,
        "node": type(intruder)(**{**intruder.__dict__, "environment": open_env})})
    cluster.project = project
    late = cluster.add("node")
    assert cluster.wait(late, 30) != 0
    assert "authentication failed" in output_of(late), output_of(late)


@pytest.mark.timeout(90)
def test_node_joining_late_reads_what_was_written_before(hosts):
    cluster = hosts(GATHER, {"node": 2})
    early = cluster.replicas("node")
    for n in early:
        cluster.wait_for_line(n, r"gather: rank \d wrote its block", 30)
    late = cluster.add("node")
    assert late.name == "node-3"
    codes = cluster.wait_all([*early, late], 60)
    assert set(codes.values()) == {0}, codes
    results = {n.name: result_of(n) for n in [*early, late]}
    assert results["node-3"]["rank"] == 2
    assert all(r["match"] and r["bad_blocks"] == [] for r in results.values()), results
    # the late node got the early nodes' blocks (2 x 4 pages) from them or the directory
    assert results["node-3"]["stats"]["counters"].get("pages_in", 0) >= 8


@pytest.mark.timeout(90)
def test_node_leaving_on_sigterm_hands_its_pages_back(hosts):
    cluster = hosts(GATHER, {"node": 2})
    leaver, stayer = cluster.replicas("node")
    for n in (leaver, stayer):
        cluster.wait_for_line(n, r"gather: rank \d wrote its block", 30)
    t0 = time.monotonic()
    assert cluster.stop(leaver, timeout_s=20) == 0  # docker stop: SIGTERM, then exit 0
    assert time.monotonic() - t0 < 15
    assert "left the cluster on SIGTERM" in output_of(leaver)
    # the leaver's block now lives only in the directory: both others read it after it left
    late = cluster.add("node")
    codes = cluster.wait_all([stayer, late], 60)
    assert codes == {stayer.name: 0, late.name: 0}, codes
    for n in (stayer, late):
        r = result_of(n)
        assert r["match"] and r["bad_blocks"] == [], r
    # it said goodbye: the directory did not have to give it up as silent
    (directory,) = cluster.replicas("directory")
    assert "declared dead" not in output_of(directory), output_of(directory)


#: a link down for less than the cut-off (NODE_CUT_OFF_S): the sessions ride it out
SHORT_OUTAGE_S = 2.0
#: a link down for longer than the death deadline: the cut node stops, the others carry on
LONG_OUTAGE_S = 8.0
STREAM = {"DSM_NODES": "3", "DSM_WORKLOAD": "stream",
          "DSM_WORKLOAD_ARGS": "--rounds 200 --interval 0.05"}


@pytest.mark.timeout(90)
def test_a_short_link_outage_loses_nothing_and_kills_nobody(hosts):
    cluster = hosts(STREAM, {"node": 3})
    nodes = cluster.replicas("node")
    for n in nodes:
        cluster.wait_for_line(n, r"stream: rank \d started", 30)
    cluster.cut(nodes[-1])
    time.sleep(SHORT_OUTAGE_S)  # the outage itself, not a wait for readiness
    cluster.restore(nodes[-1])
    codes = cluster.wait_all(nodes, 60)
    assert set(codes.values()) == {0}, {n.name: output_of(n)[-2000:] for n in nodes}
    for n in nodes:
        r = result_of(n)
        assert r["match"] and r["rounds"] == 200, r
    (directory,) = cluster.replicas("directory")
    assert "declared dead" not in output_of(directory), output_of(directory)[-3000:]
    assert "LOST" not in output_of(directory)


@pytest.mark.timeout(90)
def test_link_cut_fails_the_cut_node_and_the_others_carry_on(hosts):
    cluster = hosts(STREAM, {"node": 3})
    nodes = cluster.replicas("node")
    for n in nodes:
        cluster.wait_for_line(n, r"stream: rank \d started", 30)
    cut_node, others = nodes[-1], nodes[:-1]
    t_cut_wall, t_cut = time.time(), time.monotonic()
    cluster.cut(cut_node)

    # the cut node's workload fails within a bound instead of hanging
    code = cluster.wait(cut_node, REQUEST_TIMEOUT_S + 10)
    elapsed = time.monotonic() - t_cut
    assert code != 0
    assert elapsed < REQUEST_TIMEOUT_S + 8, elapsed
    assert "SIGBUS" in output_of(cut_node), output_of(cut_node)

    # the others are not held up by the cut node: each keeps working past the moment the
    # directory gives it up, except that a page the cut node wrote and nobody read before the
    # cut is lost with it, and a node that reads one fails loudly, naming it (never zeros)
    codes = cluster.wait_all(others, 30)
    for n in others:
        if codes[n.name] == 0:
            r = result_of(n)
            assert r["match"] and r["rounds"] == 200, r
            assert r["finished_at"] > t_cut_wall + NODE_TIMEOUT_S, (r["finished_at"], t_cut_wall)
        else:
            out = output_of(n)
            assert re.search(r"are LOST: their newest contents died with node node-3-", out), out
    (directory,) = cluster.replicas("directory")
    cluster.wait_for_line(directory, r"node node-3-\d+ declared dead", 5)
    # the link comes back after the long outage: the cut node stays fenced (no split brain)
    time.sleep(max(0.0, t_cut + LONG_OUTAGE_S - time.monotonic()))
    cluster.restore(cut_node)
    assert cut_node.proc.poll() is not None


@pytest.mark.timeout(90)
def test_scripts_start_and_tear_down_namespace_hosts(namespaces, tmp_path):
    state = tmp_path / "netns"
    env = {**_environment_without_shards(), "PYTHON": sys.executable}
    env.pop("DSM_AGENT_SOCKET", None)

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "scripts" / args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=60, env=env)

    up = script("netns-cluster-up", "-n", "2", "-w", "stream", "-s", str(state),
                "--", "--rounds", "20000")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        run_id = json.loads((state / "hosts.json").read_text())["run_id"]
        assert len(network.list_runs()[run_id]) == 4  # directory, 2 nodes, the switch
        deadline = time.monotonic() + 30
        while not all("started" in (state / f"node-{k}.log").read_text() for k in (1, 2)):
            assert time.monotonic() < deadline, "the nodes did not start"
            time.sleep(0.1)
    finally:
        down = script("cluster-down", "-s", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    assert run_id not in network.list_runs()
    for k in (1, 2):
        assert "left the cluster on SIGTERM" in (state / f"node-{k}.log").read_text()
