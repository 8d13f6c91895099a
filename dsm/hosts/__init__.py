"""Namespace hosts: a compose project run on network namespaces of this machine, one host per
service replica, joined by a bridge (``dsm hosts``; see ``runner.py``)."""
