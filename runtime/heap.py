"""Keeping the garbage collector's pauses out of the streaming path.

CPython's full (generation 2) collection walks every container object the process holds, and the
event loop stands still meanwhile. A Convoy process holds about 110,000 of them once Ray, FastAPI
and pydantic are imported (170,000 with a provider SDK), so each full collection stopped the API,
a host or a benchmark client for 60 to 240 ms (measured by ``convoy bench streams`` at 1,000
streams): the p99 of every chunk in flight at that moment.

The objects that exist once a process is set up (modules, classes, schemas, routes, SDK clients)
live as long as the process. ``freeze`` moves them into the permanent generation, which collections
skip; everything made later (requests, streams, turns) is collected as before, so a full collection
costs what the live work holds, not what the imports left behind.

The cost: a reference cycle among frozen objects is never collected. So freeze only at the end of
a set-up step (a process started, a provider SDK loaded), never on a per-request path.

A frozen process also collects less often (``THRESHOLDS``). CPython runs a full collection once
the objects that survived younger collections pass a quarter of those it already holds; frozen
objects do not count, so in a burst (1,000 turns accepted at once, each request's objects alive
until it answers) the API ran a full collection every few hundred milliseconds, each walking the
whole burst, 20 to 160 ms apiece (about half a second of a 3-second burst), and each host several
of 25 to 100 ms. Measured with ``convoy bench turns``: with a full collection at most every hundred
middle ones, none ran while serving, and the burst's accept p50 fell from 1.26-1.29 s to
0.79-1.19 s, its first token p50 from 3.1-3.2 s to 2.3-2.9 s. A young generation of 5,000 objects
instead of 700 makes a tenth of the collections, with the same objects to walk (most die young).
Cyclic garbage is still collected: the young and middle generations as before, only the oldest
later.
"""

from __future__ import annotations

import gc

THRESHOLDS = (5000, 10, 100)  # CPython's default: (700, 10, 10)


def freeze(*, collect: bool = True) -> None:
    """Move every object the process holds now out of the collector's sight, and collect less often
    from then on (see the module docstring). ``collect`` first
    collects what is already garbage, so none of it is kept forever (a full collection: only where
    a pause is harmless, e.g. before a process starts serving)."""
    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
