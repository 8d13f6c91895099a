"""The guards around every message: rate-limited complaints, handlers for every message a
service may receive, and a bad message that changes nothing."""

import logging

import pytest

from dsm import protocol as p
from dsm.directory.service import DirectoryService
from dsm.directory.shard import Coordinator
from dsm.layout import DEFAULT_BASE_ADDRESS, PAGE_SIZE, AddressError, Layout
from dsm.logthrottle import RateLimit, ThrottledLog, ThrottleFilter

pytestmark = pytest.mark.timeout(30)

MAX_LINES = 3
INTERVAL_S = 10.0
FLOOD_LINES = 100
REGION_PAGES = 64


class FakeClock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self):
        return self.now_s


def test_a_flood_is_cut_to_n_lines_per_interval_then_one_suppressed_line(caplog):
    clock = FakeClock()
    throttled = ThrottledLog(logging.getLogger("test.flood"), "garbage",
                             RateLimit(MAX_LINES, INTERVAL_S, clock))
    with caplog.at_level(logging.WARNING, "test.flood"):
        for i in range(FLOOD_LINES):
            throttled(logging.WARNING, "bad message %d", i)
        assert [r.getMessage() for r in caplog.records] == [f"bad message {i}" for i in range(MAX_LINES)]
        clock.now_s += INTERVAL_S
        throttled.flush()
        assert caplog.records[-1].getMessage().startswith(
            f"{FLOOD_LINES - MAX_LINES} more lines about garbage suppressed in the last 10 s")
        throttled(logging.WARNING, "bad message again")
        assert caplog.records[-1].getMessage() == "bad message again"


def test_a_module_filter_limits_warnings_and_lets_errors_pass(caplog):
    clock = FakeClock()
    logger = logging.getLogger("test.module")
    throttle = ThrottleFilter("module warnings", RateLimit(MAX_LINES, INTERVAL_S, clock))
    logger.addFilter(throttle)
    try:
        with caplog.at_level(logging.WARNING, "test.module"):
            for i in range(FLOOD_LINES):
                logger.warning("unexpected %d", i)
            logger.error("an error")
            assert len(caplog.records) == MAX_LINES + 1
            clock.now_s += INTERVAL_S
            logger.warning("later")
            assert "97 more lines about module warnings suppressed" in caplog.records[-1].getMessage()
    finally:
        logger.removeFilter(throttle)


@pytest.fixture
def service(tmp_path):
    svc = DirectoryService(f"ipc://{tmp_path}/d.ipc",
                           Layout(DEFAULT_BASE_ADDRESS, REGION_PAGES * PAGE_SIZE))
    yield svc
    svc.socket.close(0)


def test_the_directory_handles_every_message_it_may_receive(service):
    received = {c for c in p.MESSAGE_CLASSES.values() if c.DIRECTION & p.Direction.TO_DIRECTORY}
    # Hello opens a session and StatsQuery (read-only) is answered without one: _handle takes
    # them before the per-session handlers; the messages between shards go to the shard role
    # (a coordinator's: dsm/directory/shard/coordinator.py; ShardHello before its table)
    between_shards = received & set(p.SHARD_MESSAGES)
    # the dynamic manager's are handled only by a directory that runs it (below): another
    # refuses them as messages it has no handler for
    dynamic = received & {*p.DYNAMIC_MESSAGES, *p.RELAYED_MESSAGES} - {p.Invalidated}
    assert (received - {p.Hello, p.StatsQuery} - between_shards - dynamic
            == service.directory.handled)
    assert between_shards - {p.ShardHello} | {p.Heartbeat} == set(Coordinator(2)._handlers)


def test_a_dynamic_managers_directory_handles_its_messages_too(tmp_path):
    svc = DirectoryService(f"ipc://{tmp_path}/d.ipc",
                           Layout(DEFAULT_BASE_ADDRESS, REGION_PAGES * PAGE_SIZE),
                           manager="dynamic")
    try:
        received = {c for c in p.MESSAGE_CLASSES.values()
                    if c.DIRECTION & p.Direction.TO_DIRECTORY}
        between_shards = received & set(p.SHARD_MESSAGES)
        assert received - {p.Hello, p.StatsQuery} - between_shards == svc.directory.handled
    finally:
        svc.socket.close(0)


def test_a_discard_naming_a_page_outside_the_region_changes_nothing(service):
    pages = service.directory.pages
    pages.acquire("other", 1, 1, False, False)  # a read copy elsewhere: a discard invalidates it
    before = dict(pages._txns), pages.entry(1).copyset.copy()
    with pytest.raises(AddressError, match=f"page {REGION_PAGES} is outside"):
        service.directory._on_discard("n", p.Discard([1, REGION_PAGES]), None)
    assert (dict(pages._txns), pages.entry(1).copyset) == before
