"""Every message between the directory and the node agents: types, fields, encoding, validation.

Wire layout (ZeroMQ multipart; the directory is a ROUTER, each agent a DEALER whose identity is its
node name, so the directory's sends to a node and its replies share one FIFO pipe):

    frame 0: header, msgpack array [msg_type, field1, field2, ...]
    frame 1: page bytes (only for messages with ``carries_page`` and a DATA payload)

Page bytes travel as their own frame, never inside msgpack, and are sent and received without
copies. Each message declares the direction it travels in (``DIRECTION``) and what each field may
hold (its annotation, checked by ``dsm.schema``: exact types, numbers in range, every element of a
list). ``decode`` validates the message type and its direction, the field count, every field, and
the page frame's length, and raises ``ProtocolError`` naming what was wrong; nothing that gets
through it is of another shape. Whether a page lies within the region is for the receiver to
check (``Layout.check_page``): the protocol does not know the region.
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Any, ClassVar, Union

import msgpack
import msgspec
import numpy as np

from dsm.errors import ProtocolError
from dsm.schema import (I64, I64_MAX, U64, Pid, check_fields, field_checks, field_names,
                        one_of, ranged)


#: the most pages one message may carry or name (4 MiB of 4 KiB pages)
MAX_BATCH_PAGES = 1024
#: the most pages a lock may guard (``LockAcquire.guards``): its grant carries them all, in one
#: frame, as a page message does at most
MAX_GUARDED_PAGES = MAX_BATCH_PAGES


class MsgType(enum.IntEnum):
    # between the directory's manager shards (``dsm.directory.shard``); a shard is a peer of the
    # coordinator's ROUTER as a node is: shard -> coordinator travels as node -> directory,
    # coordinator -> shard as directory -> node
    SHARD_HELLO = 40
    SHARD_WELCOME = 41
    NODE_ADMITTED = 42
    NODE_DEAD = 43
    ARRAY_ALLOCATED = 44
    LOST_RUNS_QUERY = 45
    LOST_RUNS = 46
    STATS_RUNS_QUERY = 47
    STATS_RUNS = 48
    ARRAY_KNOWN = 49
    # node -> directory
    HELLO = 1
    ACQUIRE = 2
    FETCHED = 3
    INVALIDATED = 4
    WRITEBACK = 5
    DROP = 6
    DISCARD = 7
    ALLOC = 8
    HEARTBEAT = 9
    BYE = 10
    LOCK_ACQUIRE = 11
    LOCK_RELEASE = 12
    BARRIER_JOIN = 13
    BARRIER_WAIT = 14
    DEPARTED = 15
    LOCK_STATUS = 16
    LOST_QUERY = 17
    FORGET_LOST = 18
    STATS_QUERY = 19  #: from any peer, no session needed: read-only (``dsm top``)
    NODE_REPORT = 32  #: node -> directory, every STATS_REPORT_INTERVAL_S
    # directory -> node
    WELCOME = 20
    GRANT = 21
    FETCH = 22
    INVALIDATE = 23
    ALLOCATED = 24
    ERROR = 25
    SYNC_REPLY = 26
    LOCK_INFO = 27
    LOST = 28
    FENCED = 29
    LOST_REPORT = 30
    STATS_REPORT = 31
    WITHDRAWN = 33
    # node -> directory (central and distributed managers)
    RECEIVED = 34
    # release consistency (``dsm.core.release``): node -> a page's manager, and its answer
    DIFF = 35
    DIRTIED = 36
    DIFF_APPLIED = 37
    # node -> node (central and distributed managers)
    PEER_PAGE = 50
    # array lifetimes, atomics and collectives: node -> directory (the coordinator), and answers
    FREE = 38
    FREED = 39
    ARRAYS_QUERY = 52
    ARRAY_LIST = 53
    ATOMIC = 55
    ATOMIC_RESULT = 56
    COLLECTIVE = 57
    COLLECTIVE_RESULT = 58
    CLOSING = 59
    # between the shards: a freed array's memory is reclaimed
    ARRAY_FREED = 54
    # IVY's dynamic distributed manager (``dsm.core.dynamic``): requests along the probable
    # owners, node to node, and the directory's repair of the chains when a node dies
    PAGE_REQUEST = 60
    SERVED = 61
    TAKEN = 62
    OWNER_DEAD = 63
    OWNED_PAGES = 64


class Direction(enum.Flag):
    """Which way a message travels: a message received from the wrong side is malformed."""

    TO_DIRECTORY = 1  #: node -> directory
    TO_NODE = 2  #: directory -> node
    BOTH = TO_DIRECTORY | TO_NODE  #: both say it (Heartbeat, Bye)
    TO_PEER = 4  #: node -> node, on the peer endpoints (pages sent owner -> requester)


_DIRECTION_WORDS = {Direction.TO_DIRECTORY: "node -> directory",
                    Direction.TO_NODE: "directory -> node", Direction.BOTH: "both ways",
                    Direction.TO_PEER: "node -> node",
                    Direction.BOTH | Direction.TO_PEER: "every way",
                    Direction.TO_NODE | Direction.TO_PEER: "directory or node -> node",
                    Direction.TO_DIRECTORY | Direction.TO_PEER: "node -> directory or node"}


class SyncStatus(enum.IntEnum):
    """How a lock or barrier request ended (``SyncReply``), as the directory's lock table
    (``dsm.directory.sync``) decides."""

    GRANTED = 1  #: the lock is yours
    GRANTED_BROKEN = 2  #: the lock is yours; its previous holder died while holding it
    TIMEOUT = 3  #: the deadline passed before the lock was granted
    RELEASED = 4  #: the release is done
    JOINED = 5  #: registered as a member of the barrier
    PASSED = 6  #: every party arrived
    BROKEN = 7  #: a member of the barrier departed: it will never complete


class Payload(enum.IntEnum):
    """What a page-carrying message carries."""

    NONE = 0  #: no bytes: the receiver already has the current contents
    ZERO = 1  #: the page is all zeros (never written, or discarded): no frame is sent
    DATA = 2  #: the page bytes follow in frame 1


#: a page number (whether it is in the region is for the receiver to check)
PageNo = U64
#: how many pages one message covers
PageCount = ranged(1, MAX_BATCH_PAGES)
#: an epoch or an incarnation (``dsm.directory.sessions.new_random_id``: 63 random bits)
RandomId = ranged(0, I64_MAX)
#: a barrier's number of parties
Parties = ranged(1, I64_MAX)
#: a node's rank in its job (-1: none), and the job's size (0: no job)
JobRank = ranged(-1, I64_MAX)
JobSize = ranged(0, I64_MAX)
PayloadKind = one_of(Payload)
Status = one_of(SyncStatus)


class CreateMode(enum.IntEnum):
    """What ``node.array(..., create=)`` asks for."""

    EITHER = -1  #: find it, or make it (create=None)
    ATTACH = 0  #: it must exist (create=False)
    CREATE = 1  #: it must not exist (create=True)


class AtomicKind(enum.IntEnum):
    """An operation on one int64 element of an atomic array (``dsm.atomics``)."""

    LOAD = 1
    STORE = 2
    FETCH_ADD = 3
    EXCHANGE = 4
    COMPARE_EXCHANGE = 5


class CollectiveKind(enum.IntEnum):
    """A collective operation of a job's ranks (``dsm.collectives``)."""

    BCAST = 1
    ALLREDUCE = 2
    GATHER = 3
    ALLGATHER = 4


class ReduceOp(enum.IntEnum):
    NONE = 0  #: not a reduction
    SUM = 1
    MIN = 2
    MAX = 3


#: the key of an atomic array's meta in ``ArrayList`` rows
ATOMIC_META_KEY = "atomic"
#: the most int64 elements one atomic array holds (they live in the directory's memory)
MAX_ATOMIC_ELEMENTS = 1 << 20
#: the most ranks a collective gathers from (a job's size)
MAX_JOB_SIZE = 1 << 16
AtomicIndex = ranged(0, MAX_ATOMIC_ELEMENTS - 1)
AtomicSize = ranged(1, MAX_ATOMIC_ELEMENTS)


class Message(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A message travels as the msgpack array ``[type, field1, field2, ...]``: a msgspec
    ``Struct`` tagged with its ``MsgType`` (``tag=``, which ``TYPE`` repeats as the enum), whose
    decoder checks every field's type and bounds in C as it decodes (``dsm.schema``)."""

    TYPE: ClassVar[MsgType]
    DIRECTION: ClassVar[Direction]
    #: whether a DATA payload's page frame may follow the header
    CARRIES_PAGE: ClassVar[bool] = False


class Hello(Message, tag=MsgType.HELLO.value):
    """A node joins: its name, its agent's pid (for the logs) and its incarnation, a number
    drawn at random when the agent starts (its ZeroMQ identity is ``identity(node,
    incarnation)``), so that a restarted agent is told apart from its predecessor."""

    DIRECTION = Direction.TO_DIRECTORY
    node: str
    pid: Pid
    incarnation: RandomId
    #: the endpoint of the node's peer socket as the other nodes reach it ("" for none: the
    #: pages it asks for come through the directory)
    endpoint: str = ""
    #: the job the node is part of (``dsm.launchers``: a launcher's job, or ``DSM_RUN``), its
    #: rank in it and the job's size; rank -1: no job. When a node of a job dies, every barrier
    #: of the job breaks, naming it (``dsm.directory.sync``)
    job: str = ""
    rank: JobRank = -1
    size: JobSize = 0


class Welcome(Message, tag=MsgType.WELCOME.value):
    """The directory's answer to Hello: the region layout."""

    DIRECTION = Direction.TO_NODE
    base: U64
    size: U64
    page_size: U64
    epoch: RandomId  #: drawn at random when the directory starts: a restart changes it
    clock_ns: U64 = 0  #: the directory's trace clock when it answered (``dsm.clocksync``)
    #: pages travel node to node (the central and distributed managers): a Fetch names the
    #: requester to send them to, and read copies go back with their contents
    direct: bool = False
    #: the manager shards' endpoints, shard 0 (this coordinator) first; empty: one directory
    #: serves every page. A wildcard host (``tcp://0.0.0.0:P``) is the coordinator's host as the
    #: node reached it. The node says Hello to every shard (``dsm.agent.links``)
    shards: list[str] = msgspec.field(default_factory=list)
    #: IVY's dynamic distributed manager: pages are asked of their probable owners, node to
    #: node (``PageRequest``); the directory is the home of untouched pages and the fallback
    dynamic: bool = False


class Acquire(Message, tag=MsgType.ACQUIRE.value):
    """Ask for ``page``, read access (a copy) or write access (exclusive ownership), and, as
    read-ahead, for up to ``count - 1`` pages after it that the directory can add without waiting.
    ``have_copy``: the node holds a read copy of ``page`` and only needs the upgrade.
    ``untouched``: a write's run of untouched pages: if nobody has been granted ``page`` since
    its array was allocated (or freed), up to ``untouched`` pages from it that nobody has been
    granted either are granted with it (zeros: a sequential writer's first touch of a fresh
    array in one round trip); the node awaits ``max(count, untouched)`` pages."""

    DIRECTION = Direction.TO_DIRECTORY
    page: PageNo
    count: PageCount
    write: bool
    have_copy: bool
    untouched: PageCount = 1


class Grant(Message, tag=MsgType.GRANT.value):
    """Access granted to ``count`` pages from ``page``; the payload is their contents (or NONE
    for an upgrade).

    A write granted while other nodes' read copies are being invalidated (``acks`` not empty):
    the directory sent each of those holders an ``Invalidate`` naming this node at the same
    time, and each acknowledges straight to it (``Invalidated``, node to node; or through the
    directory, which forwards it, or tells that the holder died). The node installs the pages
    only once every holder in ``acks`` has acknowledged transaction ``txn`` (in any order, the
    grant first or last), then confirms to the directory (``Received``), which ends the
    transaction only then: an upgrade takes 3 hops, not 4."""

    DIRECTION = Direction.TO_NODE
    CARRIES_PAGE = True
    page: PageNo
    count: PageCount
    write: bool
    payload: PayloadKind
    #: pages of a release-consistency array (``dsm.core.release``): read copies the node may
    #: write after twinning them, never owned
    release: bool = False
    #: the directory's transaction, when ``acks`` is not empty (0: none to confirm)
    txn: U64 = 0
    #: the nodes whose acknowledgements (``Invalidated``) must come before the pages are used
    acks: list[str] = msgspec.field(default_factory=list)


class Fetch(Message, tag=MsgType.FETCH.value):
    """Directory to a holder: send ``count`` pages from ``page``; keep read copies
    (``keep_copy``) or give them up. Relay manager (``to_node`` empty): send them to the
    directory (``Fetched`` with DATA). Central and distributed managers: send them straight to
    node ``to_node`` at its peer endpoint ``to_addr`` (``PeerPage``), then tell the directory
    (``Fetched`` with ``sent``: with a copy of the pages when it keeps its own, so that the home
    copy is current again); a holder that cannot (it no longer holds them all, or the peer is
    unreachable) answers as to the relay manager."""

    DIRECTION = Direction.TO_NODE
    txn: U64
    page: PageNo
    count: PageCount
    keep_copy: bool
    to_node: str = ""
    to_addr: str = ""


class Fetched(Message, tag=MsgType.FETCHED.value):
    """Owner to directory: the pages (payload DATA), or NONE when the node held none of them.
    ``not_held`` lists the pages it no longer held (a Writeback crossed the Fetch): their bytes
    in the frame are meaningless."""

    DIRECTION = Direction.TO_DIRECTORY
    CARRIES_PAGE = True
    txn: U64
    page: PageNo
    count: PageCount
    payload: PayloadKind
    not_held: list[PageNo]
    #: pages granted for writing at a read (migratory) that the node did not write: the
    #: prediction was wrong for them
    unwritten: list[PageNo] = msgspec.field(default_factory=list)
    #: the pages went straight to the requester (``PeerPage``). A DATA frame here is then a copy
    #: of what it sent, from a holder that keeps a read copy (a read transfer): the directory's
    #: home copy is current again, and later readers are granted it in 2 hops, not through a
    #: keeper in 3. NONE: the holder gave them up (a write transfer)
    sent: bool = False


class Invalidate(Message, tag=MsgType.INVALIDATE.value):
    """Directory to a holder: give up ``count`` pages from ``page`` and acknowledge
    (``Invalidated``): straight to node ``to_node`` at its peer endpoint ``to_addr``, the
    writer that was granted them already and waits for every acknowledgement; to the directory
    when ``to_node`` is empty (a discard, a requester without a peer endpoint) or the holder
    cannot reach it. Under the dynamic manager, from the page's new owner itself (node to
    node: ``txn`` is its request, ``to_node`` the owner, whom the holder takes as the page's
    probable owner from then on)."""

    DIRECTION = Direction.TO_DIRECTORY | Direction.TO_NODE | Direction.TO_PEER
    txn: U64
    page: PageNo
    count: PageCount
    to_node: str = ""
    to_addr: str = ""
    #: (the dynamic manager) set by a sender that could not reach node ``relay_to``: sent to
    #: the directory instead, which relays it there
    relay_to: str = ""


class Invalidated(Message, tag=MsgType.INVALIDATED.value):
    """``holder``'s copies of the pages of transaction ``txn`` are gone. From the holder to
    the directory, or straight to the requester the ``Invalidate`` named (node to node); from
    the directory to that requester when the holder could not reach it (forwarded) or died
    before it acknowledged (its copy died with it). The requester counts each holder once:
    a duplicate, or one for a transaction it finished, changes nothing."""

    DIRECTION = Direction.TO_DIRECTORY | Direction.TO_NODE | Direction.TO_PEER
    txn: U64
    page: PageNo
    count: PageCount
    holder: str = ""
    #: (the dynamic manager) set by a sender that could not reach node ``relay_to``: sent to
    #: the directory instead, which relays it there
    relay_to: str = ""


class Writeback(Message, tag=MsgType.WRITEBACK.value):
    """A node gives ``count`` owned pages back with their contents (unmap, leave)."""

    DIRECTION = Direction.TO_DIRECTORY
    CARRIES_PAGE = True
    page: PageNo
    count: PageCount
    payload: PayloadKind


class Drop(Message, tag=MsgType.DROP.value):
    """A node gives up its read copies of ``count`` pages from ``page``. Under the central and
    distributed managers the copies go with it (DATA): the directory keeps no copy of a
    read-shared page, and the last holder's copy becomes the home copy."""

    DIRECTION = Direction.TO_DIRECTORY
    CARRIES_PAGE = True
    page: PageNo
    count: PageCount
    payload: PayloadKind = Payload.NONE


class PeerPage(Message, tag=MsgType.PEER_PAGE.value):
    """Holder to requester, node to node: the pages of transaction ``txn`` the directory asked
    ``sender`` to send, for reading or (``write``) as the new owner."""

    DIRECTION = Direction.TO_PEER
    CARRIES_PAGE = True
    txn: U64
    page: PageNo
    count: PageCount
    write: bool
    payload: PayloadKind
    sender: str


class Received(Message, tag=MsgType.RECEIVED.value):
    """Requester to directory: the pages of transaction ``txn`` came from their holder and are
    installed, or (``installed`` false, the answer to ``Withdrawn``) they never came; or, for a
    ``Grant`` with ``acks``, every acknowledgement came and the pages are installed. The
    directory ends such a transaction only on this, so that nothing it sends the requester
    later overtakes the pages."""

    DIRECTION = Direction.TO_DIRECTORY
    txn: U64
    page: PageNo
    count: PageCount
    installed: bool


class Withdrawn(Message, tag=MsgType.WITHDRAWN.value):
    """Directory to requester: ``source``, which was to send the pages of ``txn``, is gone.
    The requester answers ``Received``: installed if they came, not installed (and it will
    ignore them from now on) if not; the directory then asks again elsewhere or answers Lost."""

    DIRECTION = Direction.TO_NODE
    txn: U64
    page: PageNo
    count: PageCount
    source: str


# --- IVY's dynamic distributed manager (``dsm.core.dynamic``, docs/architecture.md) -------------
class PageRequest(Message, tag=MsgType.PAGE_REQUEST.value):
    """Request ``req`` of node ``requester`` (peer endpoint ``reply_to``) for ``page``: a read
    copy, or (``write``) ownership. Sent to the page's probable owner (node to node), or to the
    directory when the requester has none (the directory's hint) or after a death; a node that
    does not own the page forwards it to its own probable owner, and the directory to the
    last owner it knows. ``hops``: how many times it was forwarded (Li and Hudak bound it).
    ``have_copy``: the requester holds a read copy (a write to it: the owner sends no bytes if
    the copy is still in its copy set; a node gives a read copy up without telling the owner,
    whose invalidation of it is then acknowledged all the same)."""

    DIRECTION = Direction.TO_DIRECTORY | Direction.TO_NODE | Direction.TO_PEER
    req: U64
    page: PageNo
    write: bool
    requester: str
    reply_to: str
    hops: U64 = 0
    have_copy: bool = False
    #: set by a sender that could not reach node ``relay_to``, its probable owner: sent to the
    #: directory instead, which relays it there (not along its own probable owner, which may
    #: be older: the hints would no longer lead to ever newer owners)
    relay_to: str = ""
    #: ``page`` and the ``count - 1`` pages after it, none held or awaited by the requester (a
    #: sequential run). Only the first one decides where the request goes; whoever serves it
    #: may serve the following ones too, those it can in one answer (``Served.count``): the
    #: directory a run of untouched pages, an owner a run of read copies of pages it owns or,
    #: to a writer, of the pages it was handed together.
    #: The requester asks again for the rest it still needs
    count: PageCount = 1
    #: sent to a node the requester only guessed owns the page (it knows no probable owner of
    #: it, and that node owned another page of its array last it heard): a node that does not
    #: own the page forwards it at once, even while its own write of the page is out (a guess
    #: may name a node whose own request went to the requester: were both to wait for the
    #: other, neither would ever own the page). Cleared by the first forward
    guessed: bool = False


class Served(Message, tag=MsgType.SERVED.value):
    """The owner of ``page`` (``sender``, at ``sender_addr``; or the directory, the home of
    untouched pages) answers request ``req``: a read copy, or (``owner``) ownership, with the
    copy set the new owner must invalidate (``copyset``: (node, peer endpoint) pairs, each
    acknowledging straight to it) and the last request of each node served for the page
    (``served``: ownership carries it, so that a request re-sent after a death is never served
    twice). Payload NONE: the requester holds the current contents (it is in the copy set).
    ``count`` pages from ``page`` (a run request's, ``PageRequest.count``): read copies of pages
    the sender owns, or ownership with no copies: of untouched pages from the directory, or of
    pages the sender was handed together (one record of requests served, one version: what it
    says holds for every page of the run). The
    requester confirms with ``Taken``. An owner that gives a page back (an unmap, a leave)
    hands ownership to the directory the same way (``req`` 0, no ``Taken``): the directory owns
    the page again, with its copies and the requests served."""

    DIRECTION = Direction.TO_DIRECTORY | Direction.TO_NODE | Direction.TO_PEER
    CARRIES_PAGE = True
    req: U64
    page: PageNo
    count: PageCount
    owner: bool
    payload: PayloadKind
    sender: str
    sender_addr: str = ""
    copyset: list[tuple[str, str]] = msgspec.field(default_factory=list)
    served: list[tuple[str, U64]] = msgspec.field(default_factory=list)
    #: ownership's version: one more at every transfer (the directory's first hand-out is 1),
    #: so that a gather can order the reports of one page (``OwnedPages``)
    version: U64 = 0
    #: (the dynamic manager) set by a sender that could not reach node ``relay_to``: sent to
    #: the directory instead, which relays it there
    relay_to: str = ""
    #: ownership whose ``copyset`` the sender has invalidated already, each ``Invalidate``
    #: naming the requester (sent beside this answer, not after it: a hop less): the requester
    #: sends none, and awaits the holders' acknowledgements
    invalidated: bool = False


class Taken(Message, tag=MsgType.TAKEN.value):
    """Requester to the node (or the directory) that served its request ``req`` for ``page``:
    the read copy is installed (the owner serves the page's next request only then, so that
    no invalidation overtakes the copy), or ownership arrived (the old owner stops counting
    the page as on its way); ``installed`` false: a read copy nobody here asked for any more,
    refused. ``answered``: the gathers (``OwnerDead``) the requester had answered when it took
    ownership: it did not report the page to them, so the old owner, if it has not answered
    one of them yet, reports the page for it (else the page would be owned and reported by
    nobody)."""

    DIRECTION = Direction.TO_DIRECTORY | Direction.TO_NODE | Direction.TO_PEER
    req: U64
    page: PageNo
    requester: str
    installed: bool
    answered: list[U64] = msgspec.field(default_factory=list)
    #: (the dynamic manager) set by a sender that could not reach node ``relay_to``: sent to
    #: the directory instead, which relays it there
    relay_to: str = ""
    #: the pages confirmed: those of the ``Served`` answered (``Served.count``)
    count: PageCount = 1


class OwnerDead(Message, tag=MsgType.OWNER_DEAD.value):
    """Directory to every live node: ``node`` is dead. Each forgets it as a probable owner
    (the directory is the hint instead), stops counting it in copy sets and queues, ignores
    whatever still comes from it, answers ``OwnedPages`` for ``gather``, then asks the
    directory again for every page it awaits (the request may have died on a chain through
    ``node``). ``node`` empty: nobody died, but the directory lost track of a page's owner (its
    probable owner forwarded a request back to it): each node answers ``OwnedPages`` only."""

    DIRECTION = Direction.TO_NODE
    gather: U64
    node: str


class OwnedPages(Message, tag=MsgType.OWNED_PAGES.value):
    """A node's answer to ``OwnerDead``, each page with its ownership's version
    (``Served.version``): the pages it owns (``owned``: (page, version)), those whose ownership
    it sent and has no confirmation of (``handing``: (page, the node it went to, version), dead
    ones included), and the last version of each page it handed on and had confirmed
    (``passed``: (page, version)). Of a page's reports the newest version tells: owned by a
    live node, or on its way to one, the page lives; on its way to a dead node, or confirmed
    taken by a node that reports nothing newer (it died), it is lost: its newest contents may
    have been written there. A page handed out by the directory that nobody reports is lost."""

    DIRECTION = Direction.TO_DIRECTORY
    gather: U64
    node: str
    owned: list[tuple[U64, U64]]
    handing: list[tuple[U64, str, U64]] = msgspec.field(default_factory=list)
    passed: list[tuple[U64, U64]] = msgspec.field(default_factory=list)


#: the dynamic manager's messages (``dsm.core.dynamic``)
DYNAMIC_MESSAGES = (PageRequest, Served, Taken, OwnerDead, OwnedPages)
#: the node-to-node messages a sender that cannot reach the peer sends to the directory, which
#: relays them (``relay_to``)
RELAYED_MESSAGES = (PageRequest, Served, Taken, Invalidate, Invalidated)


class DiffEncoding(enum.IntEnum):
    """How a Diff says which bytes changed: whichever is shorter for that diff."""

    #: (start, length) byte ranges counted from the run's first byte, ascending and apart,
    #: packed as little-endian uint32 pairs (``SPAN_DTYPE``): few, long changes
    SPANS = 0
    #: one bit per byte of the run, set where it changed (``np.packbits`` order, the first byte
    #: in the top bit): many short changes, such as integers whose top bytes stay zero, where
    #: spans would cost 8 bytes for every 3 changed
    MASK = 1


DiffEncodingKind = one_of(DiffEncoding)


class Diff(Message, tag=MsgType.DIFF.value):
    """A node's changes to ``count`` release-consistency pages from ``page`` since their twins,
    sent to the pages' manager (their home) at a release: ``changes`` says which bytes of the
    run changed, as ``encoding`` (``DiffEncoding``) tells; the page frame is those bytes, one
    after another (no frame, payload NONE, when nothing changed). Answered by DiffApplied under
    the same ``req`` by a shard other than the coordinator only (the coordinator, or the one
    directory, gets the node's release after it on the same pipe: nothing waits for it). A
    release that goes at once carries the diffs of the coordinator's pages itself
    (``LockRelease.diffs``): a Diff is what the others take."""

    DIRECTION = Direction.TO_DIRECTORY
    CARRIES_PAGE = True
    req: U64
    page: PageNo
    count: PageCount
    encoding: DiffEncodingKind
    changes: bytes
    payload: PayloadKind

    def changed(self, page_size: int) -> "Changed | None":
        """Which bytes of the run changed (``changed_in``: ``changes`` as ``frame_bytes``
        checked it); None when nothing did (payload NONE)."""
        if self.payload != Payload.DATA:
            return None
        return changed_in(self.count, self.encoding, self.changes, page_size)

    def frame_bytes(self, page_size: int) -> int:
        """The frame's length ``changes`` calls for; ProtocolError if it does not describe bytes
        of the run (spans not ascending, apart and within it; a mask of another length)."""
        return changed_bytes_of(self.count, self.encoding, self.changes, page_size, "Diff")


def changed_of(count: int, encoding: int, changes: bytes, page_size: int) -> np.ndarray:
    """Which bytes of a run of ``count`` pages ``changes`` (as ``encoding`` says) names: a bool
    array of ``count * page_size`` (``changes`` as ``changed_bytes_of`` checked it)."""
    size = count * page_size
    if encoding == DiffEncoding.MASK:
        return np.unpackbits(np.frombuffer(changes, dtype=np.uint8)).view(bool)
    starts, lengths = _spans(changes)
    # +1 where a span starts, -1 where it ends: the running sum is 1 inside spans
    edges = np.zeros(size + 1, dtype=np.int8)
    edges[starts] = 1
    edges[starts + lengths] -= 1
    return np.cumsum(edges[:-1], dtype=np.int8).view(bool)


#: which bytes of a run a diff changed, as ``changed_in`` gives them: a bool per byte of the run,
#: or (start, length) spans in ascending order when they are few
Changed = Union[np.ndarray, list[tuple[int, int]]]
#: up to this many spans, a diff's spans are checked and applied one by one in Python: a lock's
#: counter changes a few bytes, and numpy's calls on arrays that small cost more than the loop
FEW_SPANS = 64
#: a span as ``SPAN_DTYPE`` lays it out, for the few-spans paths: (start, length)
SPAN_STRUCT = struct.Struct("<II")


def changed_in(count: int, encoding: int, changes: bytes, page_size: int) -> Changed:
    """Which bytes of a run of ``count`` pages ``changes`` (as ``encoding`` says) names: its
    spans when they are few (``FEW_SPANS``), else a bool array of ``count * page_size``
    (``changes`` as ``changed_bytes_of`` checked it)."""
    if encoding == DiffEncoding.SPANS and len(changes) <= FEW_SPANS * SPAN_BYTES:
        return list(SPAN_STRUCT.iter_unpack(changes))
    return changed_of(count, encoding, changes, page_size)


def changed_bytes_of(count: int, encoding: int, changes: bytes, page_size: int,
                     what: str) -> int:
    """How many bytes of a run of ``count`` pages ``changes`` (as ``encoding`` says) names;
    ProtocolError, naming ``what``, if it does not describe bytes of the run (spans not
    ascending, apart and within it; a mask of another length)."""
    size = count * page_size
    if encoding == DiffEncoding.MASK:
        if len(changes) * 8 != size:
            raise ProtocolError(f"{what} mask is {len(changes)} bytes: a run of "
                                f"{count} pages needs {size // 8}")
        return int(_BITS_SET[np.frombuffer(changes, dtype=np.uint8)].sum())
    if len(changes) % SPAN_BYTES:
        raise ProtocolError(f"{what} spans are {len(changes)} bytes: not (start, length) "
                            f"pairs of {SPAN_DTYPE} ({SPAN_BYTES} bytes each)")
    if len(changes) <= FEW_SPANS * SPAN_BYTES:
        total, end = 0, 0
        for i, (start, length) in enumerate(SPAN_STRUCT.iter_unpack(changes)):
            if length == 0 or start < end or start + length > size:
                raise ProtocolError(f"{what} span {i} ({start}+{length}) is not an ascending, "
                                    f"non-empty range within the run's {size} bytes")
            end = start + length
            total += length
        return total
    starts, lengths = _spans(changes)
    ends = starts + lengths
    bad = (lengths == 0) | (ends > size)
    bad[1:] |= starts[1:] < ends[:-1]
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ProtocolError(f"{what} span {i} ({starts[i]}+{lengths[i]}) is not an ascending, "
                            f"non-empty range within the run's {size} bytes")
    return int(lengths.sum())


def _spans(changes: bytes) -> tuple[np.ndarray, np.ndarray]:
    spans = np.frombuffer(changes, dtype=SPAN_DTYPE).reshape(-1, 2).astype(np.int64)
    return spans[:, 0], spans[:, 1]


#: a diff a release carries (``LockRelease.diffs``): (page, count, encoding, changes) as a
#: ``Diff`` has them; its bytes are in the release's page frame, after those of the diffs
#: before it
CarriedDiff = tuple[PageNo, PageCount, DiffEncodingKind, bytes]


def carried_frame_bytes(diffs: list, page_size: int, what: str) -> int:
    """The page frame's length the carried ``diffs`` call for (``changed_bytes_of`` each)."""
    return sum(changed_bytes_of(count, encoding, changes, page_size, f"{what}[{i}]")
               for i, (_, count, encoding, changes) in enumerate(diffs))


#: how many bits each byte value has set (a mask's changed bytes, counted a byte at a time)
_BITS_SET = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)

#: a Diff's spans: (start, length) pairs of little-endian uint32 (a run is at most 4 MiB)
SPAN_DTYPE = np.dtype("<u4")
SPAN_BYTES = 2 * SPAN_DTYPE.itemsize


class DiffApplied(Message, tag=MsgType.DIFF_APPLIED.value):
    """The manager applied the Diff ``req`` to the pages' home copy (a shard other than the
    coordinator: its node's release waits for it)."""

    DIRECTION = Direction.TO_NODE
    req: U64
    page: PageNo


class Dirtied(Message, tag=MsgType.DIRTIED.value):
    """A node twinned ``count`` release-consistency pages from ``page`` and writes them: should
    it die before its Diff, the pages' newest contents die with it (they are lost, loudly)."""

    DIRECTION = Direction.TO_DIRECTORY
    page: PageNo
    count: PageCount


class Discard(Message, tag=MsgType.DISCARD.value):
    """A node discarded pages (MADV_REMOVE): they become zero everywhere."""

    DIRECTION = Direction.TO_DIRECTORY
    pages: list[PageNo]


class Alloc(Message, tag=MsgType.ALLOC.value):
    """Find or create the named allocation; ``meta`` describes it (shape, dtype) and must match."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64
    name: str
    nbytes: U64
    meta: dict[str, Any]
    create: one_of(CreateMode) = int(CreateMode.EITHER)


class Free(Message, tag=MsgType.FREE.value):
    """Free array (or atomic array) ``name``: the name is gone at once; the memory is reclaimed
    when no node holds it any more (``dsm/directory/lifetimes.py``). Answered by Freed."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64
    name: str


class Freed(Message, tag=MsgType.FREED.value):
    """``holders``: how many other nodes still hold the freed array's memory (0: reclaimed)."""

    DIRECTION = Direction.TO_NODE
    req: U64
    holders: U64


class ArraysQuery(Message, tag=MsgType.ARRAYS_QUERY.value):
    """Which arrays exist (answered by an ArrayList)."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64


class ArrayList(Message, tag=MsgType.ARRAY_LIST.value):
    """``arrays``: ``[name, nbytes, meta, holders]`` rows in address order; atomic arrays have
    ``meta["atomic"]`` true."""

    DIRECTION = Direction.TO_NODE
    req: U64
    arrays: list[tuple[str, U64, dict[str, Any], U64]]


class Atomic(Message, tag=MsgType.ATOMIC.value):
    """Do ``op`` on element ``index`` of atomic array ``name`` of ``size`` int64 elements (made,
    zero-filled, by its first use): ``operand`` is the value stored, added or exchanged,
    ``expected`` the value a COMPARE_EXCHANGE compares with. Answered by AtomicResult."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64
    name: str
    size: AtomicSize
    index: AtomicIndex
    op: one_of(AtomicKind)
    operand: I64 = 0
    expected: I64 = 0


class AtomicResult(Message, tag=MsgType.ATOMIC_RESULT.value):
    """The element's value before the operation (LOAD: its value)."""

    DIRECTION = Direction.TO_NODE
    req: U64
    value: I64


class Collective(Message, tag=MsgType.COLLECTIVE.value):
    """This node's part of collective number ``seq`` of its job: ``kind``, the ``root`` rank
    (BCAST, GATHER), the reduction ``op`` (ALLREDUCE) and this rank's ``value`` (an
    ``dsm.collectives`` encoding). Answered by a CollectiveResult once every rank's part is in."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64
    seq: U64
    kind: one_of(CollectiveKind)
    root: ranged(0, MAX_JOB_SIZE - 1)
    op: one_of(ReduceOp)
    value: Any


class CollectiveResult(Message, tag=MsgType.COLLECTIVE_RESULT.value):
    DIRECTION = Direction.TO_NODE
    req: U64
    value: Any


class Allocated(Message, tag=MsgType.ALLOCATED.value):
    DIRECTION = Direction.TO_NODE
    req: U64
    offset: U64
    nbytes: U64
    meta: dict[str, Any]


class Error(Message, tag=MsgType.ERROR.value):
    """The request ``req`` (0 when there is none) failed; ``message`` says why."""

    DIRECTION = Direction.TO_NODE
    req: U64
    message: str


class Heartbeat(Message, tag=MsgType.HEARTBEAT.value):
    """Node to directory every HEARTBEAT_INTERVAL_S; the directory answers each one, so that
    both sides notice the other's silence. ``clock_ns``: the sender's trace clock; in an answer,
    ``echo_ns`` is the ``clock_ns`` of the heartbeat answered (an NTP round trip,
    ``dsm.clocksync``; 0 when there is none)."""

    DIRECTION = Direction.BOTH
    clock_ns: U64 = 0
    echo_ns: U64 = 0


class Bye(Message, tag=MsgType.BYE.value):
    """A node leaves: it has already given back everything it held. The directory answers with
    a Bye of its own once it has processed everything the node sent before."""

    DIRECTION = Direction.BOTH


class LockAcquire(Message, tag=MsgType.LOCK_ACQUIRE.value):
    """Ask for lock ``name`` for ``holder`` ("node:pid:thread"); give up after ``timeout_ms``
    (negative: wait forever). ``guards``: the release-consistency pages the lock protects, as
    ``[first, count, ...]`` runs (at most ``MAX_GUARDED_PAGES`` in all): the grant carries
    their home copies (entry consistency, as Midway did)."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64
    name: str
    holder: str
    timeout_ms: I64
    guards: list[U64] = msgspec.field(default_factory=list)


class LockRelease(Message, tag=MsgType.LOCK_RELEASE.value):
    """Release lock ``name``. ``notices``: the release-consistency pages the node changed
    since its last release, as ``[first, count, ...]`` runs (their diffs are at their homes
    already): the write notices that every other node's next acquire invalidates.
    ``answered``: the node's agent told its thread the lock is released already (it knows the
    thread holds it, and nothing holds the release back): the directory answers only a
    release that fails (an Error), not the one that succeeds, which nobody waits for."""

    DIRECTION = Direction.TO_DIRECTORY
    CARRIES_PAGE = True
    req: U64
    name: str
    holder: str
    notices: list[U64] = msgspec.field(default_factory=list)
    answered: bool = False
    #: the diffs of the coordinator's pages, carried rather than sent ahead (one message, not
    #: one per run): applied to their home copies before the release (payload DATA: their
    #: bytes, one diff's after another's, in the page frame; a release that waited for another
    #: shard's DiffApplied carries none, its diffs went ahead)
    diffs: list[CarriedDiff] = msgspec.field(default_factory=list)
    payload: PayloadKind = Payload.NONE

    def frame_bytes(self, page_size: int) -> int:
        """The page frame's length ``diffs`` calls for; ProtocolError if one of them does not
        describe bytes of its run."""
        return carried_frame_bytes(self.diffs, page_size, "LockRelease.diffs")


class BarrierJoin(Message, tag=MsgType.BARRIER_JOIN.value):
    """Register ``holder`` as a member of barrier ``name`` of ``parties``."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64
    name: str
    parties: Parties
    holder: str


class BarrierWait(Message, tag=MsgType.BARRIER_WAIT.value):
    """Arrive at barrier ``name`` (a release: ``notices`` as in LockRelease) and wait for the
    others (the departure is an acquire)."""

    DIRECTION = Direction.TO_DIRECTORY
    CARRIES_PAGE = True
    req: U64
    name: str
    parties: Parties
    holder: str
    notices: list[U64] = msgspec.field(default_factory=list)
    #: break the barrier if the others have not all arrived within this (negative: wait
    #: forever), as ``threading.Barrier.wait(timeout)`` does
    timeout_ms: I64 = -1
    #: the diffs the arrival carries, as ``LockRelease.diffs``
    diffs: list[CarriedDiff] = msgspec.field(default_factory=list)
    payload: PayloadKind = Payload.NONE

    def frame_bytes(self, page_size: int) -> int:
        """As ``LockRelease.frame_bytes``."""
        return carried_frame_bytes(self.diffs, page_size, "BarrierWait.diffs")


class Departed(Message, tag=MsgType.DEPARTED.value):
    """A process ("node:pid") of the sender's node is gone: release its locks, break its
    barriers."""

    DIRECTION = Direction.TO_DIRECTORY
    prefix: str


class LockStatus(Message, tag=MsgType.LOCK_STATUS.value):
    """Who holds lock ``name`` and who waits for it, in order (to watch it, or to wait in a
    test until a request is queued)."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64
    name: str


class LockInfo(Message, tag=MsgType.LOCK_INFO.value):
    DIRECTION = Direction.TO_NODE
    req: U64
    holder: str
    waiting: list[str]


class SyncReply(Message, tag=MsgType.SYNC_REPLY.value):
    """The answer to a lock or barrier request: a ``SyncStatus`` and a detail text. A grant or
    a barrier's departure (an acquire) carries the write notices of the other nodes' releases
    since this node's last acquire, as ``[first, count, ...]`` runs: the node invalidates its
    copies of those pages before the waiting process goes on. A grant of a lock acquired with
    guards carries the home copies of the guarded pages it could (``guarded``, runs, in
    order; payload DATA, their bytes one after another in the page frame): the node installs
    them as clean copies before the process goes on."""

    DIRECTION = Direction.TO_NODE
    CARRIES_PAGE = True
    req: U64
    status: Status
    detail: str
    notices: list[U64] = msgspec.field(default_factory=list)
    guarded: list[U64] = msgspec.field(default_factory=list)
    payload: PayloadKind = Payload.NONE

    def frame_bytes(self, page_size: int) -> int:
        """The page frame's length ``guarded`` calls for; ProtocolError unless it is runs of
        at most ``MAX_GUARDED_PAGES`` pages in all."""
        return guarded_pages(self.guarded, "SyncReply.guarded") * page_size


def guarded_pages(runs: list[int], what: str) -> int:
    """How many pages the ``[first, count, ...]`` runs ``runs`` name; ProtocolError unless they
    are pairs of positive counts, at most ``MAX_GUARDED_PAGES`` pages in all. (Whether they
    lie in the region is the receiver's to check.)"""
    if len(runs) % 2:
        raise ProtocolError(f"{what} must be [first, count, ...] runs: {len(runs)} numbers")
    counts = runs[1::2]
    if any(c < 1 for c in counts):
        raise ProtocolError(f"{what} has a run of no pages: {runs[:8]!r:.80}")
    total = sum(counts)
    if total > MAX_GUARDED_PAGES:
        raise ProtocolError(f"{what} names {total} pages; a lock guards at most "
                            f"{MAX_GUARDED_PAGES} (they travel with every grant)")
    return total


class Lost(Message, tag=MsgType.LOST.value):
    """Directory to a node that asked for ``count`` pages from ``page``: they are lost, their
    newest contents died with node ``dead_node``. ``array`` names the allocation they belong
    to ("" if none) and ``array_page`` is the index of ``page`` within it (for the log line).
    Every access to them fails until the program calls ``node.forget_lost``."""

    DIRECTION = Direction.TO_NODE
    page: PageNo
    count: PageCount
    dead_node: str
    array: str
    array_page: U64


class Fenced(Message, tag=MsgType.FENCED.value):
    """Directory to a peer it will not serve: declared dead, joined an earlier directory (its
    ``epoch`` differs), or a second live node under a name in use. ``reason`` says which."""

    DIRECTION = Direction.TO_NODE
    epoch: RandomId
    reason: str


class Closing(Message, tag=MsgType.CLOSING.value):
    """Directory to every live node, the last thing it sends: it is stopping (``reason``: on
    which signal). A node that is leaving stops waiting for its Bye's answer
    (``dsm/clusterstop.py``)."""

    DIRECTION = Direction.TO_NODE
    reason: str


# --- between the manager shards (``dsm.directory.shard``) ----------------------------------------
#: a shard index, or -1 in a ShardHello: any free one (a replica of a scaled service)
ShardIndex = ranged(-1, I64_MAX)


class ShardHello(Message, tag=MsgType.SHARD_HELLO.value):
    """A manager shard joins the coordinator (shard 0): the shard it means to be (-1: any free
    one) of how many (0: as many as the coordinator has), the endpoint nodes reach it at (a
    wildcard host: the coordinator's host as each node knows it), and its pid (for the logs)."""

    DIRECTION = Direction.TO_DIRECTORY
    shard: ShardIndex
    shards: U64
    endpoint: str
    pid: Pid


class ShardWelcome(Message, tag=MsgType.SHARD_WELCOME.value):
    """The coordinator's answer to ShardHello (a refusal is a Fenced): the shard's index among
    ``shards``, the region, the cluster's epoch, and how every shard serves (``manager``,
    ``on_loss``: ``dsm directory``'s flags, one truth for the whole cluster)."""

    DIRECTION = Direction.TO_NODE
    shard: U64
    shards: U64
    base: U64
    size: U64
    page_size: U64
    epoch: RandomId
    manager: str
    on_loss: str


class NodeAdmitted(Message, tag=MsgType.NODE_ADMITTED.value):
    """Coordinator to shard: incarnation ``incarnation`` of ``node`` has a session; the shard
    serves its Hello from now on (a Hello that came first waits for this)."""

    DIRECTION = Direction.TO_NODE
    node: str
    incarnation: RandomId


class NodeDead(Message, tag=MsgType.NODE_DEAD.value):
    """Incarnation ``incarnation`` of ``node`` is dead. From a shard that declared it so, to the
    coordinator; from the coordinator, to every shard, which ends its session (fences it) and
    loses the pages it owned there. ``why`` is for the logs."""

    DIRECTION = Direction.BOTH
    node: str
    incarnation: RandomId
    why: str


class ArrayAllocated(Message, tag=MsgType.ARRAY_ALLOCATED.value):
    """Coordinator to shard: an array was allocated (the shards name pages by array in their
    Lost answers, logs and maps)."""

    DIRECTION = Direction.TO_NODE
    name: str
    offset: U64
    nbytes: U64
    meta: dict[str, Any]
    #: non-zero: answer ArrayKnown with it (a release-consistency array: its pages must be
    #: known as such at every shard before any node can ask for one)
    gather: U64 = 0


class ArrayFreed(Message, tag=MsgType.ARRAY_FREED.value):
    """Coordinator to shard: array ``name`` at ``offset`` is freed and no node holds it: its
    pages here become zeros (every copy invalidated) and its memory free."""

    DIRECTION = Direction.TO_NODE
    name: str
    offset: U64
    nbytes: U64
    meta: dict[str, Any]


class ArrayKnown(Message, tag=MsgType.ARRAY_KNOWN.value):
    """Shard to coordinator: the array of ArrayAllocated ``gather`` is known here."""

    DIRECTION = Direction.TO_DIRECTORY
    gather: U64


class LostRunsQuery(Message, tag=MsgType.LOST_RUNS_QUERY.value):
    """Coordinator to shard: which of ``count`` pages from ``first`` are lost (answered by
    LostRuns under the same ``gather``); ``forget``: forget them too (ForgetLost)."""

    DIRECTION = Direction.TO_NODE
    gather: U64
    first: PageNo
    count: U64
    forget: bool


class LostRuns(Message, tag=MsgType.LOST_RUNS.value):
    """Shard to coordinator: its lost pages asked for, as ``[first, count, dead node]`` runs."""

    DIRECTION = Direction.TO_DIRECTORY
    gather: U64
    runs: list[tuple[PageNo, U64, str]]


class StatsRunsQuery(Message, tag=MsgType.STATS_RUNS_QUERY.value):
    """Coordinator to shard: its counters and the states of its pages of every array
    (answered by StatsRuns under the same ``gather``), for ``dsm top``."""

    DIRECTION = Direction.TO_NODE
    gather: U64


class StatsRuns(Message, tag=MsgType.STATS_RUNS.value):
    """Shard to coordinator: ``arrays`` as in StatsReport (the pages of other shards read as
    home), ``directory`` its counters."""

    DIRECTION = Direction.TO_DIRECTORY
    gather: U64
    arrays: list[Any]
    directory: dict[str, U64]


#: the messages between the shards (registered beside the others below)
#: the messages a session never replays after a reset (a later one says the same): sent
#: unsequenced by the agent, the directory and the simulator's links alike
UNSEQUENCED: tuple[type[Message], ...] = (Heartbeat,)

SHARD_MESSAGES: tuple[type[Message], ...] = (
    ShardHello, ShardWelcome, NodeAdmitted, NodeDead, ArrayAllocated, ArrayKnown,
    LostRunsQuery, LostRuns, StatsRunsQuery, StatsRuns, ArrayFreed,
)


class LostQuery(Message, tag=MsgType.LOST_QUERY.value):
    """Which pages are lost, per array (answered by a LostReport)."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64


class ForgetLost(Message, tag=MsgType.FORGET_LOST.value):
    """The program gives up the lost pages of array ``name``: they read as zeros from now on
    (answered by a LostReport of the ranges forgotten)."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64
    name: str


class LostReport(Message, tag=MsgType.LOST_REPORT.value):
    """Lost ranges: ``ranges`` holds ``[array, start_byte, end_byte, dead_node]`` lists, the
    bytes counted from the array's start."""

    DIRECTION = Direction.TO_NODE
    req: U64
    ranges: list[tuple[str, U64, U64, str]]


class NodeReport(Message, tag=MsgType.NODE_REPORT.value):
    """A node's counters and fault-latency histogram (``dsm.core.stats``), sent every
    STATS_REPORT_INTERVAL_S so that the directory can show the whole cluster (``dsm top``)."""

    DIRECTION = Direction.TO_DIRECTORY
    counters: dict[str, U64]
    latency_counts: list[U64]
    processes: U64


class StatsQuery(Message, tag=MsgType.STATS_QUERY.value):
    """What is the cluster doing? Read-only: answered by a StatsReport to any peer, with or
    without a session."""

    DIRECTION = Direction.TO_DIRECTORY
    req: U64


class StatsReport(Message, tag=MsgType.STATS_REPORT.value):
    """``nodes``: node -> {"counters", "latency_counts", "processes", "age_s"} (the node's last
    report, ``age_s`` seconds old); ``latency_buckets_us``: the histogram's upper bounds;
    ``arrays``: ``[name, first_page, pages, runs]``, ``runs`` the page states in order as
    ``[pages, kind, holders]`` (kind "owned", "shared", "home" or "lost"); ``directory``: its
    own counters; ``manager``: which page manager it runs (``dsm.managers``: what "owned"
    means differs)."""

    DIRECTION = Direction.TO_NODE
    req: U64
    nodes: dict[str, Any]
    latency_buckets_us: list[U64]
    arrays: list[Any]
    directory: dict[str, U64]
    manager: str = ""


_ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello, Welcome, Acquire, Grant, Fetch, Fetched, Invalidate, Invalidated, Writeback,
    Drop, Discard, Alloc, Allocated, Error, Heartbeat, Bye, LockAcquire, LockRelease,
    BarrierJoin, BarrierWait, Departed, SyncReply, LockStatus, LockInfo, Lost, Fenced,
    LostQuery, ForgetLost, LostReport, NodeReport, StatsQuery, StatsReport, PeerPage,
    Received, Withdrawn, Diff, DiffApplied, Dirtied, Free, Freed, ArraysQuery, ArrayList,
    Atomic, AtomicResult, Collective, CollectiveResult, Closing, PageRequest, Served, Taken,
    OwnerDead, OwnedPages, *SHARD_MESSAGES,
)
for _cls in _ALL_MESSAGES:  # the tag as the enum, for the code that reads it
    _cls.TYPE = MsgType(_cls.__struct_config__.tag)
MESSAGE_CLASSES: dict[MsgType, type[Message]] = {cls.TYPE: cls for cls in _ALL_MESSAGES}

#: every field's check in Python (``dsm.schema``): it explains what msgspec's decoder refused
_FIELD_CHECKS = {cls: field_checks(cls) for cls in MESSAGE_CLASSES.values()}
#: each class's directions as a plain int (enum.Flag's ``&`` costs a microsecond per message)
_DIRECTION_BITS = {cls: cls.DIRECTION.value for cls in MESSAGE_CLASSES.values()}
#: message type number -> class
_CLASS_OF: dict[int, type[Message]] = {int(t): cls for t, cls in MESSAGE_CLASSES.items()}
#: the length of the header array of each class that has fields with defaults: its tag and every
#: field (msgspec would fill in the ones left out; none may be)
_HEADER_LENGTH = {cls: 1 + len(field_names(cls)) for cls in MESSAGE_CLASSES.values()
                  if cls.__struct_defaults__}
#: every message decodes through one decoder: msgspec picks the class by the array's first
#: element and checks every field as it goes
_DECODER = msgspec.msgpack.Decoder(Union[_ALL_MESSAGES])
_ENCODER = msgspec.msgpack.Encoder()
#: msgpack's array headers: fixarray holds its length in its low 4 bits; array16 and array32
#: give it in the 2 and 4 bytes after their marker
_FIXARRAY, _FIXARRAY_LAST, _ARRAY16 = 0x90, 0x9F, 0xDC


def replace(msg: Message, **changes: Any) -> Message:
    """A copy of ``msg`` with ``changes`` to its fields (messages are frozen)."""
    return msgspec.structs.replace(msg, **changes)


def field_values(msg: Message) -> dict[str, Any]:
    """``msg``'s fields by name, in order."""
    return {name: getattr(msg, name) for name in msg.__struct_fields__}


def identity(node: str, incarnation: int) -> bytes:
    """The ZeroMQ identity of incarnation ``incarnation`` of node ``node``."""
    return f"{node}#{incarnation:x}".encode(errors="surrogateescape")


def encode(msg: Message, page: Any = None) -> list[Any]:
    """The frames of ``msg``; ``page`` (a buffer) goes in its own frame for a DATA payload."""
    header = _ENCODER.encode(msg)
    if page is not None:
        return [header, page]
    return [header]


def decode(frames: list[Any], page_size: int, to: Direction) -> tuple[Message, Any]:
    """Parse and validate frames received by ``to`` (``Direction.TO_DIRECTORY``: the directory
    receives them; ``TO_NODE``: an agent does) into (message, page buffer or None). Anything
    else than a well-formed message of the receiver's direction is a ProtocolError."""
    if not frames:
        raise ProtocolError("empty message: expected a header frame")
    first = frames[0]
    try:
        msg = _DECODER.decode(first)  # bytes, or a zmq.Frame received without a copy
    except msgspec.DecodeError as exc:  # (a ValidationError is one)
        raise _refusal(first, to, exc) from None
    cls = type(msg)
    if not _DIRECTION_BITS[cls] & to._value_:  # (``.value`` is a property: ten times slower)
        raise _wrong_direction(cls, to)
    length = _HEADER_LENGTH.get(cls)
    if length is not None and _array_length(first) != length:
        raise _refusal(first, to, None)
    page = None
    if cls.CARRIES_PAGE and msg.payload == Payload.DATA:
        if len(frames) != 2:
            raise ProtocolError(f"{cls.__name__} with DATA needs 2 frames, got {len(frames)}")
        page = frames[1]
        if type(page) is not bytes:  # a zmq.Frame received without a copy: hand out its buffer
            page = memoryview(page)
        length = len(page)
        if cls in _FRAME_OF_FIELDS:
            expected = msg.frame_bytes(page_size)
            if length != expected:
                raise ProtocolError(f"{cls.__name__} frame is {length} bytes, its "
                                    f"{_FRAME_OF_FIELDS[cls]} need {expected}")
        else:
            expected = msg.count * page_size
            if length != expected:
                raise ProtocolError(
                    f"{cls.__name__} page frame is {length} bytes, expected {expected} "
                    f"({msg.count} pages of {page_size})"
                )
    elif len(frames) != 1:
        raise ProtocolError(f"{cls.__name__} needs 1 frame, got {len(frames)}")
    elif cls is Diff and msg.changes:
        raise ProtocolError("a Diff with changes needs the DATA payload and their bytes")
    elif cls is SyncReply and msg.guarded:
        raise ProtocolError("a SyncReply with guarded pages needs the DATA payload and their "
                            "bytes")
    elif (cls is LockRelease or cls is BarrierWait) and msg.diffs:
        raise ProtocolError(f"a {cls.__name__} carrying diffs needs the DATA payload and "
                            "their bytes")
    return msg, page


#: the messages whose page frame is what some of their fields describe (not ``count`` pages):
#: those fields, as a refusal names them
_FRAME_OF_FIELDS = {Diff: "changes", SyncReply: "guarded pages", LockRelease: "diffs",
                    BarrierWait: "diffs"}


def _wrong_direction(cls: type[Message], to: Direction) -> ProtocolError:
    return ProtocolError(f"{cls.__name__} travels {_DIRECTION_WORDS[cls.DIRECTION]}: it is "
                         f"not received {_DIRECTION_WORDS[to]}")


def _array_length(header: Any) -> int:
    """The length of the msgpack array that ``header``, which msgspec decoded as one, holds."""
    if type(header) is not bytes:
        header = memoryview(header)  # a zmq.Frame
    marker = header[0]
    if marker <= _FIXARRAY_LAST:
        return marker - _FIXARRAY
    size = 2 if marker == _ARRAY16 else 4  # else array32
    return int.from_bytes(header[1:1 + size], "big")


def _refusal(header: Any, to: Direction, exc: Exception | None) -> ProtocolError:
    """Why a header was refused, in the schema's words (``dsm.schema``): the slow path, run
    only for a message that is wrong."""
    try:  # (maps inside ``Any`` fields may have keys of any kind, as msgspec decodes them)
        values = msgpack.unpackb(header, strict_map_key=False)
    except Exception as bad:  # msgpack raises several unrelated exception types
        return ProtocolError(f"header is not valid msgpack: {bad}")
    if type(values) is not list or not values:
        return ProtocolError(f"header must be a non-empty array, got {type(values).__name__}")
    tag = values[0]
    cls = _CLASS_OF.get(tag) if type(tag) is int else None
    if cls is None:
        return ProtocolError(f"unknown message type {tag!r:.40}")
    if not _DIRECTION_BITS[cls] & to.value:
        return _wrong_direction(cls, to)
    checks = _FIELD_CHECKS[cls]
    if len(values) - 1 != len(checks):
        return ProtocolError(f"{cls.__name__} needs {len(checks)} fields "
                             f"({', '.join(name for name, _ in checks)}), got {len(values) - 1}")
    try:
        check_fields(cls, checks, values[1:])
    except ProtocolError as explained:
        return explained
    # the schema finds nothing wrong that msgspec did: still refused, in msgspec's words
    return ProtocolError(f"{cls.__name__}: {exc}")
