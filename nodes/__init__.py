"""Workload programs run on DSM nodes (``python -m nodes.<name>`` under ``dsm run``)."""
