"""The directory's page-state machine (IVY's manager), with no sockets.

For every page it records the owner (a node holding the only, writable copy) or, when there is
none, the home copy kept here plus the copy set of nodes holding read copies. Requests for one page
are serialized: while a transaction on a page waits for a node (a fetch from the owner, the
invalidation acknowledgements, a requester's confirmation), later requests for that page queue
behind it; other pages go on. A write is used only after every read copy has acknowledged its
invalidation: the directory grants it at once, naming the holders (``Grant.acks``), each holder
acknowledges straight to the writer (``Invalidate.to_node``; through here if it cannot reach it:
forwarded), and the writer installs once it has them all, then confirms (``Received``), which
ends the transaction (3 hops, not 4). A holder that dies first is told to the writer as
acknowledged (its copy died with it); a writer that dies before confirming may have written the
pages: they are lost with it. A writer without a peer endpoint is granted once the
acknowledgements came here.

A request names the page that faulted and, as read-ahead, how many pages after it the node would
also like. The directory adds the following pages that are in the same situation as the first
(same owner to fetch from, or at home with the same copies to invalidate) and not busy, so that a
sequential scan moves many pages per message; a page it cannot add is simply not granted.

Untouched pages: a page nobody has been granted since its array was allocated (or freed and
reclaimed, ``reclaim``) is zeros at home, with no owner and no copies (``granted``). A write to
one is granted at once together with the following untouched pages of the same array and stripe,
up to the run the node asked for (``Acquire.untouched``: a node writing in order asks for
``UNTOUCHED_RUN_PAGES``): a fresh array's first touch costs a round trip per run, and its grant
carries no bytes. A page another node holds or has held is never in such a run.

Every method takes one input and returns the messages to send, as ``Send(node, message, page)``;
the ZeroMQ loop around it (``service.py``) only moves bytes.

Two ways for pages to travel (``direct``). The relay manager moves every page through here: an
owner's pages come in a ``Fetched`` and leave in a ``Grant``, and the home copy of every
read-shared page is kept here. The central manager (and each shard of the distributed one) moves
pages node to node: a ``Fetch`` names the requester, the holder sends the pages straight to it
(``PeerPage``) and says so (``Fetched`` with ``sent``), and the requester confirms
(``Received``); the transaction ends on both, so that nothing sent to the requester afterwards
overtakes its pages, and nothing is decided about a holder's pages before it has answered. A
holder that keeps a read copy (a read) sends a copy of the pages with its ``Fetched``: the home
copy is current again, and later readers are granted it in 2 hops. A page whose contents live
only in read copies (``home_current`` false: the home copy was not refilled, as when the last
copies came from a keeper that could not send one) is read from one of them (the *keeper*), and
the last copy given up comes back with its contents. A write to a page that
several other nodes share, by a node without a copy, first fetches a copy home (a rare case:
then it is as under the relay manager), so that no invalidation can destroy the only copies.

Migratory pages (Stenström, Brorsson and Sandberg 1993; Cox and Fowler 1993): a page that nodes
read and then write in turn (a counter under a lock) costs two faults per turn, a read and an
upgrade. A page whose upgrade comes from the one reader of the last writer's page is marked
migratory; a read of a migratory page another node owns is then granted for writing (the owner
gives it up), and the requester installs it write-protected, so that its write costs only a
local fault. A holder that gives such a page up unwritten says so (``Fetched.unwritten``): the
prediction was wrong, and the page is read-shared again.

Loss: the pages a node owned when it died (or left without handing them back) held contents no
one else has. By default (``OnLoss.POISON``) they become *lost*: every later request for them is
answered with ``Lost``, never with zeros or an older copy, until the program forgets them
(``forget_lost``). ``OnLoss.LAST_COPY`` keeps the home copy even while a node owns the page, and
falls back to it, logging and counting every fallback.

The package's modules, each owning one thing:

- ``state``: the data (``PageEntry``, ``Request``, ``Txn``, ``Send``, ``Kind``, ``OnLoss``);
- ``transactions``: the page entries and the transactions on them, from a request's start to
  its grant (``PageTransactions``);
- ``inputs``: the messages in, node arrival and loss (``PageDirectory``, built on the former);
- ``loss``: the pages a death lost, and what a request for one is told (``LostPages``);
- ``dynamic``: the directory's side of IVY's dynamic distributed manager (``DynamicPages``:
  requests along probable owners, and the gathers that settle owners after a death).
"""

from dsm.directory.pages.inputs import PageDirectory, page_handlers
from dsm.directory.pages.state import Kind, OnLoss, PageEntry, Request, Send, Txn

__all__ = ["Kind", "OnLoss", "PageDirectory", "PageEntry", "Request", "Send", "Txn",
           "page_handlers"]
