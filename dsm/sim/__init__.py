"""The deterministic simulator over the node cores and the page directory: ``world`` (the
cluster, the scheduler, the invariants), ``network`` (channels, deliveries, deaths), ``nodes``
(memory, agents, threads), ``release`` (release consistency) with ``programs`` and ``model``."""
