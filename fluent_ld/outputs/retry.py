"""When to try a batch again: capped exponential backoff with jitter, ``Retry-After`` aware, and
give-up by age. Pure: the random draw and the clock come in as arguments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]

# A Retry-After longer than this is treated as this: a server asking for a day of silence is more
# likely misconfigured than serious, and the output keeps probing rather than going dark.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """Fluentd's buffer retry parameters: ``retry_wait`` doubles per attempt up to
    ``retry_max_interval``; ``retry_randomize`` spreads each wait over [0.875, 1.125] of itself
    so that many outputs do not retry in step; ``retry_timeout`` is the age at which a batch gives
    up (it then goes to the dead-letter store as expired)."""

    retry_wait: float = 1.0
    retry_max_interval: float = 300.0
    retry_timeout: float = 72 * 3600.0
    retry_randomize: bool = True

    def delay(self, attempts: int, draw: float) -> float:
        """The wait after the ``attempts``-th failed attempt (1-based); ``draw`` in [0, 1)."""
        base = self.retry_wait * (2 ** min(max(attempts - 1, 0), 62))
        base = min(base, self.retry_max_interval)
        if self.retry_randomize:
            base *= 0.875 + 0.25 * draw
        return min(base, self.retry_max_interval)

    def expired(self, created_at: float, now: float) -> bool:
        return now - created_at >= self.retry_timeout


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delta-seconds or an HTTP date); None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit also takes '²', which float() refuses
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # asctime and '-0000' dates come back naive: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)
