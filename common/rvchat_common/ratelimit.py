"""Per-client rate limiting for the edge middleware: a token bucket per API key or IP address.

A client may send ``per_minute`` requests at once (the bucket's size) and then one every
``60 / per_minute`` seconds. Clients on the exempt networks (loopback by default: one person's
own machine) are never limited. The table of buckets is bounded (least recently seen clients
are forgotten first), so a flood of addresses costs a fixed amount of memory.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections import OrderedDict

# A few thousand clients at ~150 bytes each: far below anything noticeable, and an attacker cycling
# addresses only evicts buckets (which start full again), never grows the table.
MAX_CLIENTS = 10_000


def parse_networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """'127.0.0.0/8,::1' -> networks; ValueError names a bad entry."""
    nets = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            nets.append(ipaddress.ip_network(part, strict=False))
    return nets


class RateLimiter:
    def __init__(self, per_minute: int, exempt: str = "127.0.0.0/8,::1",
                 max_clients: int = MAX_CLIENTS) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens per second
        self.exempt = parse_networks(exempt)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def is_exempt(self, host: str | None) -> bool:
        if not host:
            return True  # a Unix socket: only this machine can reach it
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return True  # not an IP at all (an in-process test transport): local by definition
        return any(addr in net for net in self.exempt)

    @staticmethod
    def key(host: str | None, api_key: str | None) -> str:
        # Keyed by API key where one is offered (many users behind one NAT each get their own
        # bucket); the key itself is not kept in memory, only a digest of it.
        if api_key:
            return "k:" + hashlib.sha256(api_key.encode("utf-8", "replace")).hexdigest()[:32]
        return f"ip:{host}"

    def check(self, host: str | None, api_key: str | None = None, now: float | None = None) -> float:
        """0 when the request may go ahead (and is counted), else the seconds until it may."""
        if not self.enabled or self.is_exempt(host):
            return 0.0
        now = time.monotonic() if now is None else now
        key = self.key(host, api_key)
        tokens, at = self._buckets.pop(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> int:
        return max(1, math.ceil(wait))

    def __len__(self) -> int:
        return len(self._buckets)
