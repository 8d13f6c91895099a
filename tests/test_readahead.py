"""The read-ahead policy on its own: sequential faults open a window, anything else resets it."""

from dsm.core.readahead import ASYNC_MIN_WINDOW_PAGES, ReadAhead


def test_random_faults_never_read_ahead():
    ra = ReadAhead(256)
    assert [ra.on_fault("s", p) for p in (5, 900, 17, 18, 400, 3)] == [1] * 6
    assert ra.next_ahead("s") is None


def test_a_short_run_such_as_a_halo_row_stays_at_one_page():
    ra = ReadAhead(256)
    assert [ra.on_fault("s", p) for p in (100, 101)] == [1, 1]


def test_a_run_that_repeats_is_asked_for_whole_from_its_first_page():
    ra = ReadAhead(256)
    # a halo row of 2 pages, then the other grid's, then the first one again
    assert [ra.on_fault("s", p) for p in (100, 101, 500, 501, 100)] == [1, 1, 1, 1, 2]
    assert ra.on_fault("s", 500) == 2  # the same for the second row: remembered when it ended
    assert ra.on_fault("s", 300) == 1  # a page that started no run: one page, as ever
    assert ra.on_fault("s", 101) == 1  # inside a run, not its first page: no memory
    assert ra.on_fault("other", 100) == 1  # another process's stream has its own memory
    ra.forget("s")
    assert ra.on_fault("s", 100) == 1


def test_a_stream_that_must_not_guess_starts_at_one_page_whatever_it_remembers():
    ra = ReadAhead(256)
    assert [ra.on_fault("s", p) for p in (100, 101, 500)] == [1, 1, 1]
    assert ra.on_fault("s", 100, recall=False) == 1  # release twins: only what is written


def test_a_rescan_starts_at_the_window_its_last_scan_reached():
    ra = ReadAhead(64)
    page = 0
    while page < 400:
        page += ra.on_fault("s", page)
    ra.on_fault("s", 9000)  # the scan ends
    assert ra.on_fault("s", 0) == 64


def test_remembered_runs_are_bounded_oldest_first():
    from dsm.core.readahead import REMEMBERED_RUNS
    ra = ReadAhead(256)
    for i in range(REMEMBERED_RUNS + 1):
        ra.on_fault("s", 10 * i)
        ra.on_fault("s", 10 * i + 1)
    ra.on_fault("s", 10**7)  # ends the last run
    assert ra.on_fault("s", 0) == 1  # the oldest is forgotten
    ra.on_fault("s", 10**7 + 50)
    assert ra.on_fault("s", 10 * REMEMBERED_RUNS) == 2


def test_a_sequential_stream_opens_then_doubles_up_to_the_maximum():
    ra = ReadAhead(64)
    windows, page = [], 0
    for _ in range(8):
        w = ra.on_fault("s", page)
        windows.append(w)
        page += w
    assert windows == [1, 1, 4, 8, 16, 32, 64, 64]


def test_asynchronous_requests_only_for_a_wide_window_and_at_most_two_windows_ahead():
    ra = ReadAhead(256)
    page = 0
    while (w := ra.on_fault("s", page)) < ASYNC_MIN_WINDOW_PAGES:
        assert ra.next_ahead("s") is None
        page += w
    ahead = []
    while (nxt := ra.next_ahead("s")) is not None:
        ahead.append(nxt)
    assert ahead == [(page + w, w)]  # the request of the fault plus one more window


def test_extents_bound_read_ahead_to_the_array():
    from dsm.core.extents import Extents

    ext = Extents(4096)
    ext.add(0, 10 * 4096)
    ext.add(10 * 4096, 4096 + 1)  # 2 pages, the last one partly used
    assert ext.end_of(0) == 10 and ext.end_of(9) == 10
    assert ext.end_of(10) == 12 and ext.end_of(11) == 12
    assert ext.end_of(12) is None


def test_a_writer_in_order_asks_for_untouched_runs_a_random_one_never():
    from dsm.core.readahead import UNTOUCHED_AFTER_FAULTS, UNTOUCHED_RUN_PAGES

    ra = ReadAhead(256)
    for page in (40, 7, 300):
        ra.on_fault("w", page)
        assert ra.untouched_run("w") == 1
    for page in range(1000, 1000 + UNTOUCHED_AFTER_FAULTS - 1):
        ra.on_fault("s", page)
        assert ra.untouched_run("s") == 1
    ra.on_fault("s", 1000 + UNTOUCHED_AFTER_FAULTS - 1)
    assert ra.untouched_run("s") == UNTOUCHED_RUN_PAGES
    # the next fault past that run (granted whole) is still in order: a run again
    ra.on_fault("s", 1000 + UNTOUCHED_AFTER_FAULTS - 1 + UNTOUCHED_RUN_PAGES)
    assert ra.untouched_run("s") == UNTOUCHED_RUN_PAGES


def test_the_agents_core_reads_ahead_as_many_pages_as_one_message_carries():
    """A scan's windows grow to a message's most (4 MiB): one request, one transfer and one
    install per 4 MiB. (The agent's split into join.py once left them at 256 pages: a quarter of
    that, its scans at 0.2x the stream.)"""
    from dsm import protocol as p
    from dsm.agent.join import node_core
    from dsm.core.stats import NodeStats
    from dsm.layout import DEFAULT_BASE_ADDRESS, PAGE_SIZE, Layout
    from dsm.trace import Tracer
    layout = Layout(DEFAULT_BASE_ADDRESS, 4 * p.MAX_BATCH_PAGES * PAGE_SIZE, PAGE_SIZE)
    welcome = p.Welcome(layout.base, layout.size, PAGE_SIZE, 1, direct=True)
    core = node_core(welcome, "n", layout, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2",
                     Tracer(None, "n"), NodeStats())
    windows = [core.readahead.on_fault("scan", page) for page in range(2 * p.MAX_BATCH_PAGES)]
    assert max(windows) == p.MAX_BATCH_PAGES
