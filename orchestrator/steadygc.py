"""Keep the garbage collector from pausing a busy process for long.

A full collection walks every tracked object. A web process with 1,000 board viewers holds some
150,000 (the ASGI stack is ~20 coroutines a connection) and each full collection took 80-230 ms
here, several times a minute, while every viewer waited. So the web app and the worker call
`steady_gc()` once they are set up: the objects made so far (modules, the store's mappings: about
120,000) are frozen out of every later walk, and young collections run every 10,000 net
allocations instead of 700, so fewer objects of requests in flight get promoted and full
collections come rarely. Garbage cycles are still collected; only what exists at the call is
never walked again.
"""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 20, 10)  # CPython's are (700, 10, 10)


def steady_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
