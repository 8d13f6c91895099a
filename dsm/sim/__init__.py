"""The deterministic simulator over the node cores and the page directory (``world``)."""
