"""The shared region's layout: where it lives in every process, how big it is, its page size.

The directory owns the layout and hands it to every node; every address and page number that
crosses a boundary is checked here.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from dsm.errors import DsmError

#: where the region is mapped in every process of the cluster; far from the heap (low addresses)
#: and from where the kernel places mmaps and stacks (just below 0x7fff_ffff_ffff)
DEFAULT_BASE_ADDRESS = 0x6000_0000_0000
DEFAULT_REGION_BYTES = 1 << 30
PAGE_SIZE = mmap.PAGESIZE


class AddressError(DsmError):
    """An address or a page number outside the region, or not aligned."""


@dataclass(frozen=True)
class Layout:
    base: int
    size: int
    page_size: int = PAGE_SIZE

    def __post_init__(self) -> None:
        if self.page_size != PAGE_SIZE:
            raise AddressError(f"page size {self.page_size} differs from this host's {PAGE_SIZE}")
        if self.base % self.page_size:
            raise AddressError(f"base address {self.base:#x} is not page aligned")
        if self.size <= 0 or self.size % self.page_size:
            raise AddressError(
                f"region size {self.size} is not a positive multiple of the page size {self.page_size}"
            )

    @property
    def num_pages(self) -> int:
        return self.size // self.page_size

    @property
    def end(self) -> int:
        return self.base + self.size

    def check_page(self, page: int) -> int:
        if not 0 <= page < self.num_pages:
            raise AddressError(f"page {page} is outside the region of {self.num_pages} pages")
        return page

    def check_offset(self, offset: int, length: int = 1) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise AddressError(
                f"range {offset:#x}+{length:#x} is outside the region of {self.size:#x} bytes"
            )
