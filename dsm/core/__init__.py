"""Coherence without sockets or kernel: the node's page states and requests (``node``), the
actions that carry its decisions out (``actions``). The directory's per-page manager is
``dsm.directory.pages``."""
