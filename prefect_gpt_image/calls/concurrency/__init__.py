"""Concurrency and rate limits for paid calls: a Prefect global limit, fronted by a local gate.

Every paid call holds one slot of the Prefect global concurrency limit named by the settings
(default ``gpt-image``), as a lease of the server's limit: a missing limit is an error, never a
silent "unlimited". The limit is created with the settings' ``concurrency_limit`` slots when it
does not exist (an existing limit keeps the value an operator gave it). With
``requests_per_minute`` set, each call also takes a token of ``<name>-rpm``, a limit with slot
decay created the same way.

Why a local gate: Prefect hands slots over slowly. A denied acquisition gets HTTP 423 and sleeps a
server-chosen Retry-After (seconds, growing with the queue), so 20 short calls under a limit of 4
take about ten times the ideal. :class:`SlotGate` is a process-local FIFO counter sized to the
limit's value (read from the server, refreshed every minute): only as many acquisitions as there
are slots reach the server, each finds a free slot at once, and the next local waiter goes the
moment a call ends. The gate is built on ``threading`` primitives and wakes async waiters through
their own loop, so it works when tasks share one event loop and when each runs in its own worker
thread and loop. Correctness across processes still comes from the server's limit: the gate only
keeps this process from queueing on it.

Why not ``prefect.concurrency.asyncio.concurrency``: measured on Prefect 3.8.8 it costs one
service queue per limit name that serializes every acquisition of the process (a 423 sleep holds
up all the others), a new API client per release and a new thread with its own client per held
slot (for lease renewal). Together about 100 ms per call on an idle server, and the first
acquisition of a process about 2 s. Here one background thread (:class:`_LeaseService`) owns one
API client per server; it acquires leases (``increment-with-lease``), renews every held lease
from a single loop, and releases them. A finished call hands its slot straight to the next call
of this process waiting at the gate (or, inside :func:`hold_slots`, keeps it a moment for the
next one), so a busy process makes no server round trip per call at all; a batch takes its
first slots in one lease, ahead of its first calls (``hold_slots(prefetch=...)``), and so does
the first wave of calls a process starts together (``asyncio.gather``, ``.map``: the first call
asks for as many slots as there are calls coming, see :func:`.admission.demand`). A call gives
its slot back as soon as the API answered (:meth:`ApiSlot.release`): downloading and storing
need no API capacity. The guarantee is unchanged: every paid call in flight holds a slot of a
live lease of the server's limit, so the limit is never exceeded across processes; slots not in
use are given back within :data:`IDLE_LEASE_SECONDS` (slots taken in one lease go back
together), and all of them when the process exits.

Where things live: :mod:`.gate` holds :class:`SlotGate`; :mod:`.limits` reads and creates the
server's limits and keeps the per-process registries (limit values, gates); :mod:`.leases` is the
lease service; :mod:`.slots` holds what calls and batches take (:func:`api_slot`,
:func:`hold_slots`); :mod:`.admission` bounds the image task runs in progress at once
(:func:`admitted`). Each depends only on those before it. Tunables are read at call time from
the module that owns them: set ``leases.IDLE_LEASE_SECONDS``, not the copy re-exported here.
"""

from .admission import admitted
from .gate import SlotGate
from .leases import IDLE_LEASE_SECONDS
from .limits import LimitInfo, ensure_limit, gate_for, slots_in_use
from .slots import ApiSlot, api_slot, hold_slots, process_limits, release_idle_leases

__all__ = [
    "IDLE_LEASE_SECONDS",
    "ApiSlot",
    "LimitInfo",
    "SlotGate",
    "admitted",
    "api_slot",
    "ensure_limit",
    "gate_for",
    "hold_slots",
    "process_limits",
    "release_idle_leases",
    "slots_in_use",
]
