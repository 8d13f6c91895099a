"""How the directory and the node agents notice each other's silence: one definition of every
deadline, and the order they must keep.

Each agent sends a heartbeat every ``HEARTBEAT_INTERVAL_S``; the directory answers each one. The
directory declares a node dead after ``NODE_TIMEOUT_S`` without a word from it and hands its pages
on (their newest contents are then lost). A node must stop writing *before* that happens, or it
would keep writing pages the directory has already given to someone else (split brain): so an
agent that has heard nothing from the directory for ``NODE_CUT_OFF_S`` stops its workload.

Why the margin suffices: the directory last heard the node at some t; the node heard the
directory's answer to that at t + d (d: one network delay plus the directory's queue), so it cuts
off at t + d + NODE_CUT_OFF_S, while the directory declares it dead at t + NODE_TIMEOUT_S at the
earliest. ``CUT_OFF_MARGIN_S`` covers d, the agent's poll interval, and a busy agent loop.
"""

#: how often an agent tells the directory it is alive (and a shard its coordinator)
HEARTBEAT_INTERVAL_S = 0.5
#: while an agent's or the directory's loop is busy, its timers (heartbeats, silences, deadlines)
#: are looked at this often, not after every message: the deadlines are tenths of seconds and
#: more, and looking costs a pass over the sessions (the simulator looks as often)
HOUSEKEEPING_INTERVAL_S = 0.005
#: a link that has received messages and sent none back acknowledges them alone this soon
#: (``dsm.reliability``): what it keeps unacknowledged stays small without a message per message
ACK_DELAY_S = 0.01
#: a link whose peer has acknowledged nothing new for this long sends again what it keeps: the
#: peer acknowledges within ACK_DELAY_S when it can, and on its heartbeats at the latest, so only
#: a loss makes it this late
ACK_TIMEOUT_S = 1.0
#: the directory declares a node dead after this much silence
NODE_TIMEOUT_S = 5.0
#: how much earlier than that a cut-off node stops (see the module docstring)
CUT_OFF_MARGIN_S = 1.5
#: an agent that has heard nothing from the directory this long stops its workload
NODE_CUT_OFF_S = NODE_TIMEOUT_S - CUT_OFF_MARGIN_S
#: a node that leaves its part of a page transaction (a Fetch, an Invalidate, the confirmation of
#: pages sent to it) undone this long is declared dead: a page cannot stay busy forever. No
#: message is lost on a live link any more (``dsm.reliability``), so this only bounds a node that
#: heartbeats but never answers; it is long enough for a link between two nodes, which no
#: heartbeat watches, to stall in TCP's retransmission backoff as long as a silent node may
#: (a link that loses 20% of its packets stalls for seconds), on top of a death deadline
TRANSACTION_TIMEOUT_S = 2 * NODE_TIMEOUT_S

#: the agent's backstop for a page request nobody answers: its waiting processes are failed
#: loudly (nothing hangs). The directory decides every request within TRANSACTION_TIMEOUT_S of
#: its turn (the holder answers or is declared dead, and the pages are served elsewhere or
#: answered Lost), and a node it serves is never silent past NODE_TIMEOUT_S, so a request that
#: waits longer than both has a directory that is alive and stuck: the agent gives up only then,
#: and never on an answer that is merely late (a late one is still installed)
REQUEST_TIMEOUT_S = NODE_TIMEOUT_S + TRANSACTION_TIMEOUT_S


# The order the deadlines keep, each margin explained above:
#   a heartbeat is sent well before a missing acknowledgement is replayed
assert HEARTBEAT_INTERVAL_S + ACK_DELAY_S < ACK_TIMEOUT_S
#   a loss is replayed several times over before a node cuts itself off, so a reset (which
#   loses what was in flight) costs a replay, never the node
assert 3 * ACK_TIMEOUT_S <= NODE_CUT_OFF_S, "a few replays must fit before the cut-off"
assert NODE_CUT_OFF_S > 4 * HEARTBEAT_INTERVAL_S, "a few lost heartbeats must not cut a node off"
#   a node stops writing before the directory hands its pages on (no split brain)
assert NODE_CUT_OFF_S + CUT_OFF_MARGIN_S <= NODE_TIMEOUT_S
#   a transaction's holder is given as long as a silent node: a live one answers far sooner
assert TRANSACTION_TIMEOUT_S >= NODE_CUT_OFF_S
#   the agent gives up on a request only after the directory has had every chance to answer it
assert REQUEST_TIMEOUT_S > max(NODE_TIMEOUT_S, TRANSACTION_TIMEOUT_S)
