"""``dsm keygen DIR [--node NAME]...``: write a cluster's CurveZMQ keys (see ``dsm/keys.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsm.keys import KEYS_ENV, KeysError, keygen


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen", help="write the cluster's CurveZMQ keys into a directory",
        description="Write DIR/directory.key{,_secret} (the directory's keypair), "
                    "DIR/node.key{,_secret} (the nodes' shared keypair) and DIR/NAME.key{,_secret} "
                    "for each --node NAME (a node's own identity, used by the node of that name), "
                    f"in pyzmq's zmq.auth format. Then pass --keys DIR (or env {KEYS_ENV}=DIR) to "
                    "the directory and to every node. The directory needs directory.key_secret "
                    "and the nodes' .key files; a node needs its .key_secret and directory.key.",
    )
    parser.add_argument("dir", metavar="DIR", help="the keys directory (made mode 0700)")
    parser.add_argument("--node", action="append", default=[], metavar="NAME",
                        help="also a keypair of this node's own (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="replace keypairs that exist (by default they are kept)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        written, kept = keygen(Path(args.dir), args.node, args.force)
    except (KeysError, OSError) as exc:
        print(f"dsm keygen: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept  {path} (it exists; --force replaces it)")
    print(f"use them with --keys {args.dir} (or {KEYS_ENV}={args.dir}) on the directory and on "
          "every node")
    return 0
