"""A real Prometheus scrapes a running cluster: Debian's ``prometheus`` with a scrape
configuration for the directory's and two nodes' ``--metrics`` endpoints (as
``deploy/prometheus/prometheus.yml`` does for the compose cluster), queried over its HTTP API:
each node's faults, pages moved and lock waits are there, and grow as the nodes work. Skipped,
with the reason, without the ``prometheus`` binary (Debian: ``apt-get install prometheus``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.cluster import Directory, NodeProcess
from tests.test_metrics import free_port

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")
#: how often Prometheus scrapes here (the shipped example: 5 s)
SCRAPE_INTERVAL_S = 1
#: how long Prometheus may take to start, and a new sample to show in a query
START_TIMEOUT_S = 30
SAMPLE_TIMEOUT_S = 20
NODES = ("pa", "pb")
#: per node: its faults, its pages moved (in and out), its lock waits (at the directory)
QUERIES = {
    "faults": "sum by (node) (dsm_node_faults_total)",
    "pages moved": "sum by (node) (dsm_node_pages_in_total + dsm_node_pages_out_total)",
    "lock waits": "sum by (node) (dsm_directory_node_lock_wait_seconds_count)",
}

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(PROMETHEUS is None,
                       reason="no prometheus here (Debian: apt-get install prometheus)"),
]

WORK = """
x = node.array("prom", (64, 512), np.int64)
for k in range(4):
    with node.lock("prom.lock"):
        x[:, 0] += 1            # every page written: it moves here from the other node
    v = int(x.sum())
"""


def query(port: int, promql: str) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return {s["metric"].get("node", s["metric"].get("job", "")): float(s["value"][1])
            for s in body["data"]["result"]}


def wait_for(port: int, promql: str, done, timeout_s: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = query(port, promql)
        if done(got):
            return got
        assert time.monotonic() < deadline, f"{promql}: {got} after {timeout_s} s"
        time.sleep(0.5)


def test_prometheus_scrapes_each_node_s_faults_pages_and_lock_waits(tmp_path):
    dir_port = free_port()
    node_ports = {name: free_port() for name in NODES}
    prom_port = free_port()
    directory = Directory(tmp_path, extra=["--metrics", str(dir_port)])
    nodes, prom = [], None
    try:
        for name in NODES:
            nodes.append(NodeProcess(directory.endpoint, name, tmp_path,
                                     env={**os.environ,
                                          "DSM_METRICS_PORT": str(node_ports[name])}))
        config = tmp_path / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE_INTERVAL_S}s, "
            f"evaluation_interval: {SCRAPE_INTERVAL_S}s}}\n"
            "scrape_configs:\n"
            f"  - job_name: dsm-directory\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{dir_port}']}}]\n"
            f"  - job_name: dsm-nodes\n"
            f"    static_configs: [{{targets: "
            f"{[f'127.0.0.1:{p}' for p in node_ports.values()]}}}]\n")
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
            start_new_session=True)
        # every target scraped and up
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                up = query(prom_port, "count by (job) (up == 1)")
                if up == {"dsm-directory": 1, "dsm-nodes": 2}:
                    break
            except OSError:
                pass  # not listening yet
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, (
                "targets not up: " + (tmp_path / "prometheus.log").read_text()[-2000:])
            time.sleep(0.5)

        seen = []
        for _ in range(2):  # work, then the samples grow, twice
            # one node after the other: each then writes pages the other holds (run at once, a
            # node may do all its round before the other starts, on pages it kept from the last
            # round: no fault, and its count does not grow; seen on a loaded CI host)
            for node in nodes:
                node.send(WORK)
                node.wait()
            last = seen[-1] if seen else {what: {n: 0.0 for n in NODES} for what in QUERIES}
            seen.append({what: wait_for(
                prom_port, promql,
                lambda got, before=last[what]: (set(got) == set(NODES) and
                                                all(got[n] > before[n] for n in NODES)),
                SAMPLE_TIMEOUT_S) for what, promql in QUERIES.items()})
        for what in QUERIES:
            print(f"prometheus: {QUERIES[what]}: {seen[0][what]} then {seen[1][what]}")
        # every query of the shipped Grafana dashboard runs, and those per node have both
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "dsm-dashboard.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                got = query(prom_port, target["expr"])
                if "by (node" in target["expr"] and "rate(" not in target["expr"]:
                    assert set(NODES) <= set(got), (panel["title"], got)
    finally:
        if prom is not None:
            os.killpg(prom.pid, signal.SIGKILL)
            prom.wait()
        for node in nodes:
            node.close()
        directory.kill()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (Debian's prometheus)")
def test_the_shipped_scrape_configuration_is_valid():
    done = subprocess.run(["promtool", "check", "config",
                           str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
