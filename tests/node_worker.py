"""A workload process driven by a test: attaches to a node and runs the snippets it is sent.

Started by ``tests/cluster.py``. Protocol over stdin/stdout, one JSON object a line:
    in:  {"code": "...python...", "result": "expression or null"}
    out: {"ok": true, "value": ...} or {"ok": false, "error": "traceback"}
The snippets run in one namespace holding ``node``, ``np``, ``dsm``, ``os``, ``libc``.
"""

import json
import os
import sys
import traceback

import numpy as np

import dsm
from dsm import libc


def main() -> None:
    directory, name = sys.argv[1], sys.argv[2]
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of snippets go to the log, not the protocol
    node = dsm.attach(directory=directory, node_name=name)
    namespace = {"node": node, "np": np, "dsm": dsm, "os": os, "libc": libc}
    out.write(json.dumps({"ok": True, "value": "attached"}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            exec(request["code"], namespace)
            value = eval(request["result"], namespace) if request.get("result") else None
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, np.ndarray):
                value = value.tolist()
            out.write(json.dumps({"ok": True, "value": value}) + "\n")
        except Exception:
            out.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
        if request.get("quit"):
            break
    node.close()


if __name__ == "__main__":
    main()
