"""Thin programs of the checkout, kept so that ``python -m nodes.NAME`` still works from it: the
logic lives in the installed package (``dsm.workloads``, ``dsm.programs``), and this directory is
not part of the wheel (nothing but ``dsm`` is installed at the top level). Installed, run
``dsm-node``, ``dsm-entrypoint`` and ``python -m dsm.workloads.NAME`` instead."""
