"""Estimating another process's clock from round trips, as NTP does.

A node sends at t0 (its clock), the reference (the directory) stamps its answer with its own clock
t_ref, the node receives it at t3. If the two one-way delays are alike, the reference read t_ref
at the round trip's midpoint: ``offset = t_ref - (t0 + t3) / 2``, and whatever the delays were,
the true offset lies within ``± (t3 - t0) / 2`` of that (the reference stamped somewhere inside
the round trip). The narrowest round trip gives the best estimate: of the last
``WINDOW_SAMPLES`` samples (old ones age out, so that a drifting clock is followed) the
narrowest is kept.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

#: round trips remembered: at one heartbeat per 0.5 s, the last 8 s
WINDOW_SAMPLES = 16


class ClockEstimate(NamedTuple):
    offset_s: float  #: the reference's clock minus this one's
    error_s: float  #: the true offset is within ± this of ``offset_s``


def estimate(t0_s: float, t_ref_s: float, t3_s: float) -> ClockEstimate:
    """One round trip's estimate (sent at ``t0_s``, stamped ``t_ref_s``, back at ``t3_s``)."""
    if t3_s < t0_s:
        raise ValueError(f"a round trip cannot end ({t3_s}) before it starts ({t0_s})")
    return ClockEstimate(t_ref_s - (t0_s + t3_s) / 2, (t3_s - t0_s) / 2)


class ClockSync:
    """The best estimate of the last ``window`` round trips."""

    def __init__(self, window: int = WINDOW_SAMPLES):
        self._samples: deque[ClockEstimate] = deque(maxlen=window)
        self.best: ClockEstimate | None = None

    def sample(self, t0_s: float, t_ref_s: float, t3_s: float) -> ClockEstimate | None:
        """Add a round trip; the new best estimate if it changed, else None."""
        self._samples.append(estimate(t0_s, t_ref_s, t3_s))
        best = min(self._samples, key=lambda e: e.error_s)
        if best == self.best:
            return None
        self.best = best
        return best
