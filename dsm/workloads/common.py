"""What the workload programs of ``dsm.workloads`` share: their arguments, how a run is named, the
phases and their timing, the check against numpy, and the lines they print.

A workload module defines ``WORKLOAD = Workload(...)``: its defaults, a ``reference`` (the whole
computation with plain numpy in one process) and a ``run`` (this node's part of it on shared
memory, through a ``Context``), and calls ``main(WORKLOAD)``. ``main`` then runs the phases:

1. attach (``dsm.attach()``: under ``dsm run``), take a ticket that names the run and, unless
   ``--rank`` says otherwise, gives this node its rank; every node waits at the ``start`` barrier;
2. **run**, timed and counted: ``run(ctx)`` initializes and computes; ``node.stats()`` before and
   after give the DSM traffic of exactly this phase (the ``done`` barrier ends it on every node);
3. **verify**: every node reads the whole result from shared memory and hashes it; the hash is
   compared with numpy's, given as ``--expect DIGEST`` (``dsm demo`` and ``dsm bench`` compute
   it in one process) or else computed by rank 0, which also counts the differing values and
   publishes its hash for the others;
4. the ``left`` barrier (nobody hands pages back before all have read), detach.

Each node prints one human line and one ``DSM-DEMO-RESULT {json}`` line on stdout (the format
``dsm demo`` collects). Exit status 0 iff its result matched numpy.

A run's arrays, locks and barriers are named ``WORKLOAD.NODES.RUN.*``. RUN is the ticket of the
node's arrival divided by NODES, taken under a lock from a counter kept per workload and node
count, so that the same programs can be run again against the same directory (named arrays and
barriers live as long as the directory). ``--run NAME`` names the run explicitly instead (useful
after a run that did not start on every node).

``--consistency release`` (or ``$DSM_CONSISTENCY``) makes the arrays that hold a workload's data
(``Context.data_array``) release-consistency arrays, for the workloads that allow it
(``Workload.consistencies``: those whose every conflicting access to their data is ordered by a
lock or a barrier). What the run itself shares (the rank claims, the published digest, the
tickets) stays sequentially consistent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dsm.consistency import Consistency

if TYPE_CHECKING:
    from dsm.node import Node
    from dsm.sync import Barrier, Lock

#: the prefix of the machine-readable line each node prints (``dsm demo`` collects it)
RESULT_PREFIX = "DSM-DEMO-RESULT "
RANK_ENV = "DSM_RANK"
NODES_ENV = "DSM_NODES"
#: a run name for every node of a run (instead of tickets)
RUN_ENV = "DSM_RUN"
#: the consistency model of the run's data arrays (``--consistency``)
CONSISTENCY_ENV = "DSM_CONSISTENCY"
DEFAULT_CONSISTENCY = Consistency.SEQUENTIAL.value
#: the counters shown on a human line (node.stats() names)
FAULT_COUNTERS = ("faults_missing_read", "faults_missing_write", "faults_wp_write")
TRAFFIC_COUNTERS = ("pages_in", "pages_out", "invalidations")
#: the barriers of a run (a workload synchronizes with ``ctx.barrier("step")``)
RUN_BARRIERS = ("start", "step", "done", "counted", "checked", "left")


@dataclass(frozen=True)
class Workload:
    """What ``dsm demo``, ``dsm bench workloads`` and ``main`` need to know of a workload."""

    name: str
    #: the module run on each node: ``python -m MODULE --rank K --nodes N --size S --iterations I``
    module: str
    summary: str
    default_size: int
    default_iterations: int
    size_help: str
    iterations_help: str
    #: the smallest size that makes sense on that many nodes
    min_size: Callable[[int], int]
    #: bytes of shared region the run needs (nodes, size, iterations)
    region_bytes: Callable[[int, int, int], int]
    #: one phrase describing the problem (nodes, size, iterations), e.g. "512x512 grid, 50 iterations"
    describe: Callable[[int, int, int], str]
    #: the computation in one process with plain numpy: the arrays the nodes must end with
    reference: Callable[[int, int, int], dict[str, np.ndarray]]
    #: this node's part on shared memory: returns what holds the result, by name: shared arrays,
    #: or functions that read shared memory and return an array (a result stored in tiles)
    run: Callable[["Context"], dict[str, Any]] | None = None
    #: optional words about the result for the human line (the arrays read back, the context)
    remark: Callable[[dict[str, np.ndarray], "Context"], str] | None = None
    #: whether the node program takes ``--expect`` (the original demo workload checks itself)
    takes_expect: bool = True
    #: extra arguments of the node program, given the whole run's timeout in seconds
    node_args: Callable[[float], list[str]] | None = None
    #: the consistency models its data arrays may have (``--consistency``): release only for a
    #: workload whose every conflicting access to them is ordered by a lock or a barrier
    consistencies: tuple[str, ...] = (DEFAULT_CONSISTENCY,)


# --- the check ------------------------------------------------------------------------------------
def digest(arrays: dict[str, np.ndarray]) -> str:
    """A hash of the arrays' bytes, in order (the same bytes give the same hash on every node)."""
    h = hashlib.sha256()
    for a in arrays.values():
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def count_differences(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> int:
    """How many values differ, bit for bit (floats too: no tolerance, -0.0 differs from 0.0)."""
    bad = 0
    for key, w in want.items():
        g = got[key]
        if g.shape != w.shape or g.dtype != w.dtype:
            bad += w.size
            continue
        as_bits = np.dtype(f"u{w.dtype.itemsize}")
        bad += int(np.count_nonzero(np.ascontiguousarray(g).view(as_bits)
                                    != np.ascontiguousarray(w).view(as_bits)))
    return bad


def values_of(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(a.size for a in arrays.values()))


def block(rank: int, parts: int, n: int) -> tuple[int, int]:
    """Items ``[lo, hi)`` of ``n`` that part ``rank`` of ``parts`` takes (contiguous, balanced)."""
    return rank * n // parts, (rank + 1) * n // parts


def stats_delta(after: dict, before: dict) -> dict:
    """``node.stats()`` of a phase: counters and latency histogram after minus before."""
    ca, cb = after.get("counters", {}), before.get("counters", {})
    counters = {k: ca.get(k, 0) - cb.get(k, 0) for k in set(ca) | set(cb)}
    la, lb = after.get("latency_counts", []), before.get("latency_counts", [])
    latency = [a - b for a, b in zip(la, lb)] if len(la) == len(lb) else list(la)
    return {"counters": {k: v for k, v in sorted(counters.items()) if v},
            "latency_buckets_us": after.get("latency_buckets_us", []),
            "latency_counts": latency}


def traffic_text(stats: dict) -> str:
    c = stats.get("counters", {})
    faults = sum(c.get(k, 0) for k in FAULT_COUNTERS)
    return (f"{faults} faults (read {c.get('faults_missing_read', 0)}, "
            f"write {c.get('faults_missing_write', 0)}, wp {c.get('faults_wp_write', 0)}), "
            f"pages in {c.get('pages_in', 0)} / out {c.get('pages_out', 0)}, "
            f"invalidations {c.get('invalidations', 0)}")


# --- the context a workload runs in ---------------------------------------------------------------
@dataclass
class Context:
    node: "Node"
    rank: int
    nodes: int
    size: int
    iterations: int
    #: what the run's arrays, locks and barriers are named after (``WORKLOAD.NODES.RUN.``)
    prefix: str
    #: the consistency model of the data arrays (``data_array``)
    consistency: str = DEFAULT_CONSISTENCY
    #: extra fields for the result line (e.g. a total the human line mentions)
    info: dict[str, Any] = field(default_factory=dict)
    _barriers: dict[str, "Barrier"] = field(default_factory=dict)
    _locks: dict[str, "Lock"] = field(default_factory=dict)

    def array(self, name: str, shape: Any, dtype: Any) -> np.ndarray:
        """A sequentially consistent array of the run: for what is read without a lock or a
        barrier in between (a flag spun on), or is not the workload's data."""
        return self.node.array(self.prefix + name, shape, dtype)

    def data_array(self, name: str, shape: Any, dtype: Any) -> np.ndarray:
        """An array of the workload's data, in the run's consistency model (``--consistency``).
        Under release consistency a write is seen elsewhere only after a lock release or
        barrier arrival on the writer's side and a grant or departure on the reader's: every
        conflicting access to it must be ordered by the run's locks or barriers."""
        return self.node.array(self.prefix + name, shape, dtype, consistency=self.consistency)

    def barrier(self, name: str = "step") -> "Barrier":
        """The run's barrier ``name`` of all its nodes (one handle each: joining once). The
        barriers of ``RUN_BARRIERS`` are joined before the run starts: a node that fails breaks
        them for the others; another name is joined on first use."""
        if name not in self._barriers:
            self._barriers[name] = self.node.barrier(self.prefix + name, self.nodes)
        return self._barriers[name]

    def lock(self, name: str) -> "Lock":
        if name not in self._locks:
            self._locks[name] = self.node.lock(self.prefix + name)
        return self._locks[name]

    def block(self, n: int) -> tuple[int, int]:
        return block(self.rank, self.nodes, n)


# --- arguments -------------------------------------------------------------------------------------
def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def parse_args(spec: Workload, argv: list[str] | None) -> argparse.Namespace:
    module = sys.modules.get(spec.module)
    parser = argparse.ArgumentParser(
        prog=f"python -m {spec.module}", description=(module.__doc__ if module else spec.summary),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rank", type=int, default=_env_int(RANK_ENV),
                        help=f"this node's index, 0..nodes-1 (env {RANK_ENV}; default: the order "
                             "in which the nodes arrive)")
    parser.add_argument("--nodes", type=int, default=_env_int(NODES_ENV),
                        help=f"how many nodes take part (env {NODES_ENV}; required)")
    parser.add_argument("--size", type=int, default=spec.default_size,
                        help=f"{spec.size_help} (default {spec.default_size})")
    parser.add_argument("--iterations", type=int, default=spec.default_iterations,
                        help=f"{spec.iterations_help} (default {spec.default_iterations})")
    parser.add_argument("--run", default=os.environ.get(RUN_ENV),
                        help=f"name of this run, the same on every node (env {RUN_ENV}; default: "
                             "numbered by the nodes' arrival)")
    parser.add_argument("--consistency", choices=spec.consistencies,
                        default=os.environ.get(CONSISTENCY_ENV) or DEFAULT_CONSISTENCY,
                        help=f"consistency model of the data arrays (env {CONSISTENCY_ENV}; "
                             f"default {DEFAULT_CONSISTENCY}; this workload: "
                             f"{', '.join(spec.consistencies)})")
    parser.add_argument("--expect", metavar="DIGEST",
                        help="numpy's digest of the result (default: rank 0 computes it)")
    parser.add_argument("--reference", action="store_true",
                        help="no DSM: time the computation with plain numpy in this one process")
    args = parser.parse_args(argv)
    if args.nodes is None:
        parser.error(f"--nodes (or ${NODES_ENV}) is required")
    if args.consistency not in spec.consistencies:  # (a default from the environment)
        parser.error(f"{spec.name} runs under {', '.join(spec.consistencies)} consistency, not "
                     f"{args.consistency!r} (${CONSISTENCY_ENV})")
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.rank is not None and not 0 <= args.rank < args.nodes:
        parser.error(f"--rank must be in 0..{args.nodes - 1}")
    if args.size < spec.min_size(args.nodes):
        parser.error(f"--size must be at least {spec.min_size(args.nodes)} on {args.nodes} nodes")
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    return args


# --- the phases ------------------------------------------------------------------------------------
def _join_run(node: "Node", spec: Workload, args: argparse.Namespace) -> tuple[str, int]:
    """The run's name prefix and this node's rank."""
    if args.run is not None:
        if args.rank is None:
            raise ValueError("--run needs --rank (there is no arrival order to number the nodes)")
        return f"{spec.name}.{args.run}.", args.rank
    key = f"{spec.name}.{args.nodes}.tickets"
    tickets = node.array(key, (1,), np.int64)
    with node.lock(key):
        ticket = int(tickets[0])
        tickets[0] = ticket + 1
    rank = args.rank if args.rank is not None else ticket % args.nodes
    return f"{spec.name}.{args.nodes}.{ticket // args.nodes}.", rank


def execute(spec: Workload, node: "Node", args: argparse.Namespace) -> dict:
    """The phases on an attached node; the result line's fields."""
    t0 = time.monotonic()
    prefix, rank = _join_run(node, spec, args)
    ctx = Context(node, rank, args.nodes, args.size, args.iterations, prefix,
                  consistency=args.consistency)
    # join every barrier of the run now: a node that fails anywhere later (say, asking for an
    # array with another shape) then breaks them for the others instead of leaving them waiting
    for name in RUN_BARRIERS:
        ctx.barrier(name)
    # every rank exactly once: a rank taken twice would compute garbage, then hang
    claims = ctx.array("ranks", (args.nodes,), np.int64)
    with ctx.lock("ranks"):
        claims[rank] += 1
    ctx.barrier("start").wait()
    if claims.tolist() != [1] * args.nodes:
        raise RuntimeError(f"ranks claimed by the nodes of run {prefix[:-1]!r}: {claims.tolist()} "
                           "(each must be claimed once: check --rank, or name the run with --run)")
    before = node.stats()
    t_run = time.monotonic()
    shared = spec.run(ctx)
    ctx.barrier("done").wait()
    t_done = time.monotonic()
    stats = stats_delta(node.stats(), before)
    ctx.barrier("counted").wait()  # nobody reads others' pages before all have counted

    t_v = time.monotonic()
    # read everything back from shared memory
    got = {k: (v() if callable(v) else np.array(v)) for k, v in shared.items()}
    mine = digest(got)
    mismatches = None
    want_digest = args.expect
    if want_digest is None:
        published = ctx.array("expect", (16,), np.uint8)
        if rank == 0:
            want = spec.reference(args.nodes, args.size, args.iterations)
            mismatches = count_differences(got, want)
            want_digest = digest(want)
            published[:] = np.frombuffer(want_digest.encode(), np.uint8)
        ctx.barrier("checked").wait()
        want_digest = bytes(published).decode()
    match = mine == want_digest
    t_verify = time.monotonic() - t_v
    remark = spec.remark(got, ctx) if spec.remark else ""
    ctx.barrier("left").wait()  # nobody leaves (and hands its pages back) before all have read
    result = {
        "workload": spec.name,
        "rank": rank,
        "node": node.name,
        "nodes": args.nodes,
        "run": prefix[:-1],
        "consistency": args.consistency,
        "match": match,
        "values": values_of(got),
        "digest": mine,
        "expected": want_digest,
        "seconds": {"setup": round(t_run - t0, 4), "compute": round(t_done - t_run, 4),
                    "verify": round(t_verify, 4)},
        "stats": stats,
        **ctx.info,
    }
    if mismatches is not None:
        result["mismatches"] = mismatches
    if remark:
        result["remark"] = remark
    return result


def human_line(spec: Workload, args: argparse.Namespace, result: dict) -> str:
    what = spec.describe(args.nodes, args.size, args.iterations)
    rank = result.get("rank", args.rank)
    who = f"{result.get('node', '?')} (rank {'?' if rank is None else rank} of {args.nodes})"
    if "error" in result:
        return f"{spec.name}: {who}, {what}: FAILED: {result['error']}"
    s = result["seconds"]
    if result["match"]:
        verdict = f"MATCH numpy (digest {result['digest']})"
    else:
        verdict = f"MISMATCH: digest {result['digest']}, numpy's {result['expected']}"
        if "mismatches" in result:
            verdict += f" ({result['mismatches']} of {result['values']} values differ)"
    remark = f"; {result['remark']}" if result.get("remark") else ""
    model = f", {args.consistency} consistency" if args.consistency != DEFAULT_CONSISTENCY else ""
    return (f"{spec.name}: {who}, {what}{model}: {s['compute']:.2f} s (verify {s['verify']:.2f} s); "
            f"{traffic_text(result['stats'])}{remark}; {verdict}")


def reference_run(spec: Workload, args: argparse.Namespace) -> dict:
    """``--reference``: the whole computation with plain numpy in this one process, timed."""
    t0 = time.perf_counter()
    want = spec.reference(args.nodes, args.size, args.iterations)
    seconds = time.perf_counter() - t0
    return {"workload": spec.name, "reference": True, "nodes": args.nodes, "match": True,
            "values": values_of(want), "digest": digest(want),
            "seconds": {"compute": round(seconds, 4)}}


def attach_and_report(name: str, rank: int, body: Callable[["Node"], dict],
                      human: Callable[[dict], str] | None = None) -> int:
    """Attach to this node's agent, run ``body(node)`` and print its result line (on an error,
    a failed result with the error and the node's counters); exit status 0 iff it matched."""
    import dsm

    node = None
    try:
        node = dsm.attach()
        result = body(node)
    except Exception as exc:
        traceback.print_exc()
        result = {"workload": name, "rank": rank, "match": False,
                  "error": f"{type(exc).__name__}: {exc}"}
        if node is not None:
            result["node"] = node.name
            try:
                result["stats"] = node.stats()
            except Exception:  # the agent may be what failed
                pass
    finally:
        if node is not None:
            node.close()
    if human is not None:
        print(human(result), flush=True)
    print(RESULT_PREFIX + json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if result.get("match") else 1


def main(spec: Workload, argv: list[str] | None = None) -> int:
    args = parse_args(spec, argv)
    if args.reference:
        result = reference_run(spec, args)
        print(f"{spec.name}: plain numpy in one process, "
              f"{spec.describe(args.nodes, args.size, args.iterations)}: "
              f"{result['seconds']['compute']:.3f} s (digest {result['digest']})")
        print(RESULT_PREFIX + json.dumps(result, separators=(",", ":")), flush=True)
        return 0
    return attach_and_report(spec.name, args.rank, lambda node: execute(spec, node, args),
                             lambda result: human_line(spec, args, result))
