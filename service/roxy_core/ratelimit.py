"""A token bucket per client address."""

from __future__ import annotations

import math
import threading
import time

# Buckets of clients that went quiet are dropped once this many exist, so a
# scan from many addresses cannot grow the table without bound.
MAX_TRACKED_CLIENTS = 10_000


class TokenBuckets:
    """Admit ``rate_per_s`` requests a second per client, ``burst`` at once."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str) -> float:
        """Take a token; 0.0 when admitted, else seconds until one is free."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > MAX_TRACKED_CLIENTS:
                self._forget_full(now)
            return (1.0 - tokens) / self.rate_per_s

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self.rate_per_s
        for client, (_, last) in list(self._buckets.items()):
            if now - last >= refill_s:
                del self._buckets[client]


def retry_after_header(wait_s: float) -> str:
    # Retry-After takes whole seconds; round up so a client that obeys it
    # finds a token waiting.
    return str(max(1, math.ceil(wait_s)))
