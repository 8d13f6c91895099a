#!/usr/bin/env python3
"""Write userfaultfd.json: Docker's default seccomp profile (docker-default.json, from moby
20.10.24, Debian's docker.io source package) with exactly one change, the name ``userfaultfd``
added to its unconditional allow list (the first rule: SCMP_ACT_ALLOW, no arguments, no
capability or kernel conditions), in alphabetical order. tests/test_deploy.py checks that the
file in the repository is what this writes.

    python3 deploy/seccomp/make-profile.py            # rewrites userfaultfd.json beside it
"""

from __future__ import annotations

import bisect
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / "docker-default.json"
PROFILE = HERE / "userfaultfd.json"
ADDED = "userfaultfd"


def unconditional_allow_rule(profile: dict) -> dict:
    """The rule that allows syscalls whatever their arguments, capabilities and kernel."""
    for rule in profile["syscalls"]:
        if rule.get("action") == "SCMP_ACT_ALLOW" and not rule.get("args") \
                and not rule.get("includes") and not rule.get("excludes"):
            return rule
    raise ValueError(f"{DEFAULT.name}: no unconditional SCMP_ACT_ALLOW rule")


def with_userfaultfd(profile: dict) -> dict:
    out = json.loads(json.dumps(profile))
    names = unconditional_allow_rule(out)["names"]
    if ADDED in names:
        raise ValueError(f"{DEFAULT.name} already allows {ADDED}")
    bisect.insort(names, ADDED)
    return out


def render(profile: dict) -> str:
    # the layout of Docker's file: tabs, no trailing newline
    return json.dumps(profile, indent="\t")


def main() -> int:
    PROFILE.write_text(render(with_userfaultfd(json.loads(DEFAULT.read_text()))))
    print(f"wrote {PROFILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
