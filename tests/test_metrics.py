"""``--metrics PORT``: the directory's and an agent's Prometheus metrics, scraped over HTTP."""

from __future__ import annotations

import os
import re
import socket
import urllib.request

import pytest

from dsm.managers import Manager
from tests.cluster import Directory, NodeProcess

pytestmark = pytest.mark.timeout(60)

SCRAPE_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as r:
        assert r.status == 200
        return r.read().decode()


def value(text: str, pattern: str) -> float:
    m = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.M)
    assert m, f"no sample matching {pattern!r} in:\n{text}"
    return float(m.group(1))


def test_directory_and_agent_metrics_are_scraped_over_http(tmp_path):
    dir_port, node_port = free_port(), free_port()
    directory = Directory(tmp_path, extra=["--metrics", str(dir_port)])
    node = None
    try:
        node = NodeProcess(directory.endpoint, "a", tmp_path,
                           env={**os.environ, "DSM_METRICS_PORT": str(node_port)})
        node.run("x = node.array('m', (64, 512), np.int64); x[:, 0] = 1; v = int(x.sum())\n"
                 "with node.lock('m.lock'):\n    pass\n"
                 "node.barrier('m.barrier', 1).wait()")
        d = scrape(dir_port)
        assert value(d, "dsm_directory_lock_wait_seconds_count") == 1
        assert value(d, "dsm_directory_barrier_wait_seconds_count") == 1
        assert value(d, r'dsm_directory_node_lock_wait_seconds_count\{node="a"\}') == 1
        assert value(d, "dsm_directory_pages_lost_total") == 0
        assert value(d, "dsm_directory_nodes") == 1
        # the directory handed a the untouched pages it asked for: with grants, or under the
        # dynamic manager (the home of untouched pages) with Served answers to page requests
        request, answer, answers_counted = (
            ("PageRequest", "Served", "dynamic_served") if directory.manager is Manager.DYNAMIC
            else ("Acquire", "Grant", "grants"))
        assert value(d, f"dsm_directory_{answers_counted}_total") >= 1
        assert value(d, r'dsm_messages_total\{direction="received",process="directory",'
                        rf'type="{request}"\}}') >= 1
        assert value(d, r'dsm_message_bytes_total\{direction="sent",process="directory",'
                        rf'type="{answer}"\}}') > 0  # zero pages: headers only
        a = scrape(node_port)
        assert value(a, r'dsm_node_faults_total\{kind="missing_write",node="a"\}') >= 1
        assert value(a, r'dsm_node_pages_in_total\{node="a"\}') >= 64
        assert value(a, r'dsm_node_fault_latency_seconds_count\{node="a"\}') >= 1
        assert 'dsm_node_fault_latency_seconds_bucket{le="+Inf",node="a"}' in a
    finally:
        if node is not None:
            node.close()
        directory.kill()
