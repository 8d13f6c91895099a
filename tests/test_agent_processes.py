"""The agent's per-process address map: Remap and Unmap arithmetic (no kernel needed)."""

from dsm.agent.processes import Mapping, WorkloadProcess

BASE = 0x6000_0000_0000
PAGE = 4096


class FakeUffd:
    def close(self):
        pass


def proc():
    return WorkloadProcess(FakeUffd(), None, [Mapping(BASE, 16 * PAGE, 0)])


def test_unmap_splits_and_reports_region_ranges():
    p = proc()
    assert p.unmap(BASE + 4 * PAGE, BASE + 6 * PAGE) == [(4 * PAGE, 2 * PAGE)]
    assert p.offset_of(BASE + 3 * PAGE) == 3 * PAGE
    assert p.offset_of(BASE + 4 * PAGE) is None
    assert p.offset_of(BASE + 6 * PAGE) == 6 * PAGE
    assert not p.covers(5 * PAGE) and p.covers(6 * PAGE)


def test_remap_moves_the_region_bytes_with_the_addresses():
    p = proc()
    new = 0x7000_0000_0000
    p.remap(BASE + 2 * PAGE, new, 2 * PAGE)
    assert p.offset_of(new + PAGE) == 3 * PAGE
    assert p.offset_of(BASE + 2 * PAGE) is None
    assert p.addresses_of(3 * PAGE, PAGE) == [(new + PAGE, PAGE)]


def test_forked_child_maps_what_the_parent_maps():
    p = proc()
    p.unmap(BASE, BASE + PAGE)
    child = p.forked(FakeUffd(), p.copy_mappings())
    assert child.mappings == p.mappings and child.mappings is not p.mappings
