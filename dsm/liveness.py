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

#: how often an agent tells the directory it is alive
HEARTBEAT_INTERVAL_S = 0.5
#: the directory declares a node dead after this much silence
NODE_TIMEOUT_S = 5.0
#: how much earlier than that a cut-off node stops (see the module docstring)
CUT_OFF_MARGIN_S = 1.5
#: an agent that has heard nothing from the directory this long stops its workload
NODE_CUT_OFF_S = NODE_TIMEOUT_S - CUT_OFF_MARGIN_S
#: a node that leaves a Fetch or an Invalidate unanswered this long is declared dead (its
#: answer may have been lost: a page cannot stay busy forever)
TRANSACTION_TIMEOUT_S = NODE_TIMEOUT_S

assert NODE_CUT_OFF_S > 4 * HEARTBEAT_INTERVAL_S, "a few lost heartbeats must not cut a node off"
