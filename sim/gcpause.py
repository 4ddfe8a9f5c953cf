"""Python's cyclic garbage collector paused around work whose objects live to its end.

CPython frees most objects by reference counting; the cyclic collector exists for
reference cycles. It runs when enough container objects have been allocated, and each
full (oldest-generation) pass traverses every tracked object of the process. Work that
allocates many objects that all stay reachable until it ends — a burst of flow tuples
while a large collective is priced, a serving run's requests and step-pricing caches, a
training step's task graph — sets off such passes again and again, and they find
nothing to free. Pausing the collector for the duration changes no result: objects are
freed by reference counting as before, and the few cycles made meanwhile are collected
after the pause.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused(active: bool = True) -> Iterator[None]:
    """The cyclic collector off while ``active`` (and if it was on), back on after."""
    if not active or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
