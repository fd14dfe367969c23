"""``convoy bench streams``: what a chunk's trip from a conversation's writer to a client costs.

Every figure is a per-chunk latency: the producer stamps ``time.perf_counter_ns()`` into the item
right before handing it to the writer, and the consumer subtracts that from its own
``perf_counter_ns()`` when the bytes reach it. On Linux ``perf_counter`` is ``CLOCK_MONOTONIC``,
one clock for every process of the machine, so producer and consumer may live in different
processes (they do). The wall clock (``time_ns``) is carried too, for readers on other machines.

What runs, each in its own process and event loop, as in production (this matters on 2 cores):

- Redis: an embedded Valkey in a temporary home, unless ``CONVOY_REDIS_URL``;
- Ray: a local instance unless ``RAY_ADDRESS``, with the conversation hosts (idle: nothing is
  delivered to them; they are there so the replica's router sees live hosts, as in production;
  not started on a shared Redis, where they would take over the real hosts' conversations);
- the **producer**: a Ray actor pinned to this node, writing every stream of a phase from one
  event loop, as a conversation host does. Ray starts workers at nice 15; the producer puts itself
  back to 0 so that, on one shared machine, priority does not decide the figures;
- one **API replica**: ``convoy api`` (the real FastAPI app on uvicorn) in a subprocess;
- the **client processes** (``bench.streams.sse``, spawned per HTTP phase through ``bench.clients``,
  the mechanism ``convoy bench scale`` uses too): each reads a round-robin share of the SSE streams
  and sends back its samples, merged into one distribution. ``--client-processes`` sets how many;
  by default one per 100 streams, at most one per core. One client process reading 1,000 streams
  pegs a core and queues the last streams' chunks behind the first; spread, the client's CPU is
  printed per phase with its busiest process's share of a core, so a reader sees whether the
  client or Convoy was the limit;
- this process (the driver): creates the runs, and on the bus paths reads them.

Each scenario (S streams at R chunks/s each, steady, with random phases) is measured three ways:

- ``convoy, HTTP SSE``: the real ``ChunkWriter`` (fenced script, coalescing while a write is in
  flight) -> Redis -> the replica's ``TailerPool`` -> ``run_events`` -> uvicorn -> an httpx client
  per stream on ``GET /v1/runs/{id}/stream``, in the client processes. This is the product's path;
- ``convoy, bus only``: the same writer -> a ``TailerPool`` subscription in the driver, no HTTP;
- ``baseline, bus only``: a Letta-style bus, written here: the writer buffers chunks and flushes
  them to the run's Redis stream when ``FLUSH_ITEMS`` are buffered, or when a background task
  (every ``FLUSH_CHECK_S``) finds ``FLUSH_AGE_S`` passed since the last flush; the reader polls
  ``XRANGE`` every ``POLL_INTERVAL_S``. It has no HTTP leg, so ``baseline / convoy HTTP`` is a
  lower bound of the end-to-end ratio, and ``baseline / convoy bus`` compares like with like.

Runs are created as ``api.turns.accept_turn`` creates them (``RunStore.index`` and
``Mailbox.accept``) but never delivered to a host: the producer owns them instead, with a fencing
epoch taken the way an activation takes one (``INCR`` of the conversation's epoch key). It moves
each run to ``running``, streams it, and ends it with ``RunStore.end`` and the real terminal
sequence, so every SSE response ends with ``[DONE]``. Chunks are counted on both sides: a chunk
written and never received is reported.

Nothing is asserted. Figures go to stdout (also when interrupted), progress to stderr. The CPU each
process used during each measured window is printed with it, as a share of a core and per chunk
(net of what the process uses when idle, measured once before the first phase; the server's total
leaves the client processes out): on a small machine a saturated process turns latency into
queueing, and the figures say so rather than hide it. That is also why the many-streams scenario
defaults to a low rate per stream: its total is what two cores can carry, not what a token stream
does.
"""
