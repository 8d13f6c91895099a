"""Coherence without sockets or kernel: the node's page states and requests (``node``), the
actions that carry its decisions out (``actions``), its read-ahead (``readahead``), the array
extents read-ahead stops at (``extents``) and its counters (``stats``). The directory's
per-page manager is ``dsm.directory.pages``."""
