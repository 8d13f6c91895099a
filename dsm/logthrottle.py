"""Log lines about hostile or broken input, rate-limited: a flood of garbage must fill neither
the disk nor the terminal.

At most ``max_lines`` lines are written per ``interval_s``; the lines past that are counted, and
once the interval is over one line says how many were suppressed. ``ThrottledLog`` is for the
lines a service writes about a message it refuses; ``ThrottleFilter`` is put on the logger of a
module whose warnings a peer can provoke (the directory's page-state machine warns about every
unexpected answer), and limits its records up to WARNING (errors always pass).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

#: lines written per interval before the rest are only counted
MAX_LINES_PER_INTERVAL = 20
LOG_INTERVAL_S = 10.0


class RateLimit:
    """``max_lines`` per ``interval_s``; counts what it refuses."""

    def __init__(self, max_lines: int = MAX_LINES_PER_INTERVAL,
                 interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.max_lines = max_lines
        self.interval_s = interval_s
        self._clock = clock
        self._window_start = clock()
        self._written = 0
        #: lines refused in the current interval
        self.suppressed = 0
        #: every line asked for, written or not
        self.total = 0

    def allow(self) -> bool:
        self.total += 1
        if self._written >= self.max_lines:
            self.suppressed += 1
            return False
        self._written += 1
        return True

    def roll(self) -> tuple[int, float]:
        """Start a new interval if the current one is over: (lines it suppressed, its length in
        seconds); (0, 0.0) while it lasts."""
        now = self._clock()
        length_s = now - self._window_start
        if length_s < self.interval_s:
            return 0, 0.0
        suppressed = self.suppressed
        self._window_start = now
        self._written = 0
        self.suppressed = 0
        return suppressed, length_s

    def summary(self, what: str, suppressed: int, length_s: float) -> str:
        return (f"{suppressed} more lines about {what} suppressed in the last {length_s:.0f} s "
                f"(at most {self.max_lines} per {self.interval_s:.0f} s)")


class ThrottledLog:
    """``throttled(level, fmt, *args)`` logs like ``logger.log``, at most N lines per interval."""

    def __init__(self, logger: logging.Logger, what: str, limit: RateLimit | None = None):
        self._log = logger
        self._what = what  #: what the lines are about, for the "suppressed" line
        self.limit = limit or RateLimit()

    def __call__(self, level: int, fmt: str, *args: Any, exc_info: Any = None) -> None:
        self.flush()
        if self.limit.allow():
            self._log.log(level, fmt, *args, exc_info=exc_info)

    def flush(self) -> None:
        """Write the "suppressed" line of an interval that is over (a service loop calls this on
        its timer, so that the count is told even when the flood has stopped)."""
        suppressed, length_s = self.limit.roll()
        if suppressed:
            self._log.warning("%s", self.limit.summary(self._what, suppressed, length_s))


class ThrottleFilter(logging.Filter):
    """Lets at most N records up to WARNING through per interval; the first one after an
    interval with suppressed records says how many were."""

    def __init__(self, what: str, limit: RateLimit | None = None):
        super().__init__()
        self._what = what
        self.prefix = ""  #: the module prefix it was put on (``throttle_module_logs``)
        self.limit = limit or RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True
        suppressed, length_s = self.limit.roll()
        if not self.limit.allow():
            return False
        if suppressed:
            record.msg = f"({self.limit.summary(self._what, suppressed, length_s)}) {record.msg}"
        return True


def throttle_module_logs(prefix: str, what: str) -> ThrottleFilter:
    """Rate-limit, with one shared budget, the warnings of the loggers of module ``prefix`` and
    of every module under it that is imported by now (modules make their loggers at import).
    Idempotent: call it from a service's entry point."""
    manager = logging.Logger.manager
    names = [n for n in list(manager.loggerDict) if n == prefix or n.startswith(prefix + ".")]
    loggers = [logging.getLogger(n) for n in {prefix, *names}]
    for logger in loggers:
        for existing in logger.filters:
            if isinstance(existing, ThrottleFilter) and existing.prefix == prefix:
                return existing
    throttle = ThrottleFilter(what)
    throttle.prefix = prefix
    for logger in loggers:
        logger.addFilter(throttle)
    return throttle
