"""The whole cluster stopped at once (``scancel`` of a Slurm job signals the directory and every
task together; ``dsm/clusterstop.py``): a node whose leave meets a stopping directory does not
report a failed leave, and says that the cluster stopped with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import Directory

ROOT = Path(__file__).resolve().parents[1]
#: how long a node may take to start and to stop
RUN_TIMEOUT_S = 60
#: a leave that met a stopping directory ends at once: well under the 5 s a leave may wait for
#: its acknowledgement (LEAVE_TIMEOUT_S)
QUIET_STOP_S = 4.0

WORKLOAD = """
import time, dsm, numpy as np
with dsm.attach() as node:
    x = node.array("held", (256, 512), np.int64)
    x[:] = 7  # pages this node owns: a leave hands them back
    print("READY", flush=True)
    while True:
        time.sleep(0.05)
"""


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
@pytest.mark.parametrize("directory_first_s", [0.3, 0.0])
def test_a_leave_that_meets_a_stopping_directory_is_quiet(tmp_path, directory_first_s):
    """0.3: the directory is signalled first, its Closing reaches the node before the node's
    own SIGTERM (its leave needs no answer); 0.0: both at once, as scancel does (either way)."""
    directory = Directory(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI_", "DSM_"))}
    node = subprocess.Popen(
        [sys.executable, "-m", "dsm", "run", "--directory",
         directory.endpoint, "--", sys.executable, "-c", WORKLOAD],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        start_new_session=True, env={**env, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)})
    try:
        assert node.stdout.readline().strip() == "READY", node.stderr.read()
        directory.proc.send_signal(signal.SIGTERM)
        time.sleep(directory_first_s)
        t0 = time.monotonic()
        node.send_signal(signal.SIGTERM)
        _, err = node.communicate(timeout=RUN_TIMEOUT_S)
        took_s = time.monotonic() - t0
        assert directory.proc.wait(timeout=10) == 0
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        directory.kill()
    assert node.returncode == 0, err
    assert "did not acknowledge" not in err and "may be lost" not in err, err
    assert "status 4" not in err, err
    if directory_first_s:
        assert "dsm run: the cluster stopped with this node while leaving on SIGTERM" in err, err
        assert took_s < QUIET_STOP_S, f"the leave took {took_s:.1f} s:\n{err}"
    else:
        assert ("the cluster stopped with this node" in err
                or "left the cluster on SIGTERM" in err), err
