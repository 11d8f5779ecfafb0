"""Stats layer: what a mount's process has done, counted as it happens, for `desfs status`.

One set of counters per process (a process serves one mount): HTTP requests made and under way,
file bytes fetched, block cache hits and misses. Plain integers under one lock; imports nothing.
"""

from __future__ import annotations

import threading
import time


class Counters:
    FIELDS = ("requests", "in_flight", "bytes_fetched", "block_hits", "block_misses")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        for name in self.FIELDS:
            setattr(self, name, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in self.FIELDS}


COUNTERS = Counters()
