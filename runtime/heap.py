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
"""

from __future__ import annotations

import gc


def freeze(*, collect: bool = True) -> None:
    """Move every object the process holds now out of the collector's sight. ``collect`` first
    collects what is already garbage, so none of it is kept forever (a full collection: only where
    a pause is harmless, e.g. before a process starts serving)."""
    if collect:
        gc.collect()
    gc.freeze()
