"""The views' colours and names, in one place: the HTML page (``static/view.js``, which gets them
in its data document) and the PNG (``dsm.viz.png``) draw with these and nothing else, so that a
colour means the same thing in both and every colour drawn is in the legend.

- one colour per node, used for its lane, its arrows (a message is drawn in its sender's colour),
  its ownership strips and its legend entry; managers share one dark grey;
- a state mark (the square on a lane at each state change) says what the process holds after
  the step, in one of a few neutral shades (``STATE_KINDS``) that no node uses;
- the ownership strips: the owner's colour, read copies in their holders' colours (pale), a
  release-consistency page's home, its twins, diffs and write notices (``OWNERSHIP_KINDS``).
"""

from __future__ import annotations

#: node colours, in lane order (no red, grey, black or gold: the states and marks use those)
NODE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#393b79", "#637939"]
MANAGER_COLOR = "#444444"

#: state marks: kind -> (colour, legend text); ``state_kind`` sorts a state text into one
STATE_KINDS = {
    "writable": ("#111111", "writable copy (exclusive, owned, private, twinned)"),
    "copy": ("#ffffff", "read copy (shared, clean; at home with copies)"),
    "none": ("#b0b0b0", "no copy (invalid; at home, nobody holds it)"),
    "transient": ("#ffd000", "in transit (asked for, busy)"),
    "lost": ("#7f0000", "lost"),
}
#: the outline of every state mark (a read copy is a hollow square)
MARK_OUTLINE = "#111111"

#: ownership strips: kind -> (colour, legend text); None: the holders' node colours
OWNERSHIP_KINDS = {
    "owned": (None, "owner (full height, in the owner's colour)"),
    "shared": (None, "read copies (a pale band per holder, in its colour)"),
    "home": ("#dddddd", "at home, no copies"),
    "release": ("#fff1a8", "release-consistency page at home (merges diffs)"),
    "twin": (None, "twinned: the node is writing its copy (its colour, outlined)"),
    "diff": ("#000000", "diff merged at home (tick)"),
    "notice": ("#c00000", "write notice: the node's copy invalidated (triangle)"),
    "lost": ("#7f0000", "lost"),
}
#: the step-through cursor
CURSOR_COLOR = "#e4007c"

#: messages of joining and staying alive: hidden by default (the page's checkbox, --joins)
JOIN_MESSAGES = ("Hello", "Welcome", "Heartbeat", "NodeReport")

_WRITABLE = ("exclusive", "dirty", "private")
_TRANSIENT = ("busy", "read", "write-pending", "asking")


def lane_colors(lanes: list[str], roles: dict[str, str]) -> dict[str, str]:
    """Each lane's colour: managers dark grey, nodes in lane order."""
    out: dict[str, str] = {}
    n = 0
    for name in lanes:
        if roles.get(name) == "manager":
            out[name] = MANAGER_COLOR
        else:
            out[name] = NODE_COLORS[n % len(NODE_COLORS)]
            n += 1
    return out


def state_kind(text: str, event: str = "") -> str:
    """The kind of a state text (a node's ``shared``, a directory's ``owned:a``, ...)."""
    if text == "lost" or event == "LOST":
        return "lost"
    if event == "ACQUIRE" or text in _TRANSIENT:  # a node asked: it waits for the page
        return "transient"
    if text.startswith(("owned:", "private")) or text in _WRITABLE:
        return "writable"
    if text.startswith("home{}") or text in ("invalid", "release home", ""):
        return "none"
    if text.startswith(("home{", "release home")) or text in ("shared", "clean", "held"):
        return "copy"
    return "transient"


def payload() -> dict:
    """What the page needs of this module (``html.payload`` adds it to its data document)."""
    return {
        "states": {k: {"color": c, "text": t} for k, (c, t) in STATE_KINDS.items()},
        "ownership": {k: {"color": c, "text": t} for k, (c, t) in OWNERSHIP_KINDS.items()},
        "outline": MARK_OUTLINE, "cursor": CURSOR_COLOR, "joins": list(JOIN_MESSAGES),
    }
