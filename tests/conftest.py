import pytest

from tests.cluster import Directory, NodeProcess, dump_logs


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
