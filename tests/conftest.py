import os

import pytest

from tests.cluster import Directory, NodeProcess, dump_logs

#: set to 1 to run the tests marked ``slow`` (``.ci/slow-check`` does, as a step of CI's own)
SLOW_ENV = "DSM_TEST_SLOW"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: the largest configuration of something the suite also tests smaller "
        f"(more nodes, more shards, every benchmark at once); run with {SLOW_ENV}=1, as "
        ".ci/slow-check does, so that the README's command keeps within 15 minutes on 2 cores")


def pytest_collection_modifyitems(config, items):
    if os.environ.get(SLOW_ENV) == "1":
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.hook.pytest_deselected(items=slow)


def pytest_report_header(config):
    if os.environ.get(SLOW_ENV) != "1":
        return (f"the tests marked slow (larger configurations of what the suite tests) are "
                f"deselected: {SLOW_ENV}=1 runs them (.ci/slow-check)")
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    tmp_path = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and tmp_path is not None:
        report.sections.append(("cluster logs", dump_logs(tmp_path)))


@pytest.fixture(params=["tcp"])
def transport(request):
    return request.param


@pytest.fixture
def manager():
    """The directory's manager: its default (DSM_MANAGER, else dsm.managers.DEFAULT_MANAGER);
    a test about one manager's protocol parametrizes this."""
    return None


@pytest.fixture
def directory(tmp_path, transport, manager):
    d = Directory(tmp_path, transport, extra=["--manager", manager] if manager else [])
    yield d
    d.kill()


@pytest.fixture
def make_node(tmp_path, directory):
    nodes = []

    def make(name):
        node = NodeProcess(directory.endpoint, name, tmp_path)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()  # detach and stop the agent; killed if it does not finish in time
