"""The read-ahead policy on its own: sequential faults open a window, anything else resets it."""

from dsm.core.readahead import ASYNC_MIN_WINDOW_PAGES, ReadAhead


def test_random_faults_never_read_ahead():
    ra = ReadAhead(256)
    assert [ra.on_fault("s", p) for p in (5, 900, 17, 18, 400, 3)] == [1] * 6
    assert ra.next_ahead("s") is None


def test_a_short_run_such_as_a_halo_row_stays_at_one_page():
    ra = ReadAhead(256)
    assert [ra.on_fault("s", p) for p in (100, 101)] == [1, 1]


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
