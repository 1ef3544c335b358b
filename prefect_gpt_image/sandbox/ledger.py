"""The sandbox's billing ledger and request log, readable from any thread.

The server's event loop writes; tests and benchmarks read (in-process or over
``/sandbox/ledger`` and ``/sandbox/requests``) to check what was billed and what was sent.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, TypedDict

from .config import CONTRACT_PRICE_PER_IMAGE

__all__ = ["BilledImage", "Ledger", "LedgerEntry", "LedgerStats", "LoggedFile", "RequestLogEntry"]


class BilledImage(TypedDict):
    """One billed image: the URL sent (None for ``b64_json``), its hash and size."""

    url: str | None
    sha256: str
    size_bytes: int


class LedgerEntry(TypedDict):
    """One billed request: ``n`` images generated; ``delivered`` if the full answer was sent;
    ``price_per_image`` the price charged for each and ``cost`` for all ``n`` (USD); ``usage`` the
    token usage its answer reported, ``billing`` whether ``cost`` is per image or by that usage."""

    request_id: str
    endpoint: str
    n: int
    images: list[BilledImage]
    price_per_image: float
    cost: float
    usage: dict[str, Any] | None
    billing: str
    delivered: bool
    fault: str | None
    created: float


class LoggedFile(TypedDict):
    """One uploaded file part of an edit request."""

    field: str
    filename: str | None
    content_type: str | None
    size: int
    sha256: str


class RequestLogEntry(TypedDict):
    """One API request as the sandbox saw it (never the API key: only whether auth passed);
    ``client_gone`` once the sandbox noticed the client leave before its answer was complete."""

    request_id: str
    endpoint: str
    method: str
    status: int | None
    fault: str | None
    auth_ok: bool | None
    fields: dict[str, Any]
    files: list[LoggedFile]
    started: float
    finished: float | None
    client_gone: bool


class LedgerStats(TypedDict):
    """Totals since the last reset; ``in_flight`` is live, ``max_in_flight`` its peak;
    ``billed_cost`` the sum of the entries' costs (USD)."""

    billed_images: int
    billed_requests: int
    billed_cost: float
    requests: int
    in_flight: int
    max_in_flight: int
    balance_remaining: int | None


class Ledger:
    """Billing ledger, request log, concurrency and balance counters behind one lock.

    Reads return deep copies, so callers may keep or change them freely.
    """

    def __init__(
        self,
        balance: int | None = None,
        price_per_image: float = CONTRACT_PRICE_PER_IMAGE,
        token_prices: tuple[float, float, float] | None = None,
    ) -> None:
        """Start empty; ``balance`` is the number of images that may be billed (None: unlimited);
        each billed image costs ``price_per_image`` (USD), or, with ``token_prices`` (USD per
        million text input, image input, image output tokens), each request its usage's tokens."""
        self._lock = threading.Lock()
        self._balance = balance
        self._price = price_per_image
        self._token_prices = token_prices
        self._cost = 0.0
        self._entries: list[LedgerEntry] = []
        self._log: list[RequestLogEntry] = []
        self._log_index: dict[str, RequestLogEntry] = {}
        self._billed_images = 0
        self._reserved = 0
        self._in_flight = 0
        self._max_in_flight = 0

    # -- reading --------------------------------------------------------------------------

    @property
    def entries(self) -> list[LedgerEntry]:
        """Billed requests, oldest first."""
        with self._lock:
            return copy.deepcopy(self._entries)

    @property
    def requests(self) -> list[RequestLogEntry]:
        """The request log: every ``/v1`` request, in arrival order."""
        with self._lock:
            return copy.deepcopy(self._log)

    @property
    def billed_images(self) -> int:
        """Images billed since the last reset."""
        with self._lock:
            return self._billed_images

    @property
    def price_per_image(self) -> float:
        """What each billed image is charged (USD)."""
        return self._price

    @property
    def total_cost(self) -> float:
        """What the billed images cost since the last reset: the sum of the entries' costs (USD)."""
        with self._lock:
            return self._cost

    @property
    def billed_requests(self) -> int:
        """Requests billed since the last reset."""
        with self._lock:
            return len(self._entries)

    @property
    def in_flight(self) -> int:
        """Image requests being served right now."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most image requests admitted at the same time since the last reset."""
        with self._lock:
            return self._max_in_flight

    @property
    def balance_remaining(self) -> int | None:
        """Images that may still be billed, or None when no balance is configured."""
        with self._lock:
            return self._remaining()

    def stats(self) -> LedgerStats:
        """All counters at once, consistently."""
        with self._lock:
            return LedgerStats(
                billed_images=self._billed_images,
                billed_requests=len(self._entries),
                billed_cost=self._cost,
                requests=len(self._log),
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                balance_remaining=self._remaining(),
            )

    def entry(self, request_id: str) -> LedgerEntry | None:
        """The ledger entry of one request, or None if it was not billed."""
        with self._lock:
            for item in self._entries:
                if item["request_id"] == request_id:
                    return copy.deepcopy(item)
        return None

    def request(self, request_id: str) -> RequestLogEntry | None:
        """The log entry of one request, or None if it is unknown."""
        with self._lock:
            found = self._log_index.get(request_id)
            return copy.deepcopy(found) if found is not None else None

    def snapshot(self) -> dict[str, Any]:
        """``{"entries": [...], "stats": {...}}``, as served by ``GET /sandbox/ledger``."""
        with self._lock:
            entries = copy.deepcopy(self._entries)
        return {"entries": entries, "stats": dict(self.stats())}

    def reset(self) -> None:
        """Forget entries, the log and counters and restore the balance.

        Requests still in flight stay counted in ``in_flight`` and keep their reservations.
        """
        with self._lock:
            self._entries.clear()
            self._log.clear()
            self._log_index.clear()
            self._billed_images = 0
            self._cost = 0.0
            self._max_in_flight = self._in_flight

    # -- writing (the server) --------------------------------------------------------------

    def begin_request(self, request_id: str, endpoint: str, method: str) -> None:
        """Add a log entry for a request that just arrived."""
        entry = RequestLogEntry(
            request_id=request_id,
            endpoint=endpoint,
            method=method,
            status=None,
            fault=None,
            auth_ok=None,
            fields={},
            files=[],
            started=time.time(),
            finished=None,
            client_gone=False,
        )
        with self._lock:
            self._log.append(entry)
            self._log_index[request_id] = entry

    def update_request(self, request_id: str, **values: Any) -> None:
        """Set fields of a request's log entry (ignored if it was reset away)."""
        with self._lock:
            found = self._log_index.get(request_id)
            if found is not None:
                found.update(values)  # type: ignore[typeddict-item]

    def finish_request(self, request_id: str, status: int | None) -> None:
        """Record the final status and finish time of a request."""
        self.update_request(request_id, status=status, finished=time.time())

    def try_admit(self, limit: int | None) -> bool:
        """Count one more image request in flight, unless ``limit`` are already in flight."""
        with self._lock:
            if limit is not None and self._in_flight >= limit:
                return False
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return True

    def release(self) -> None:
        """An admitted image request has finished."""
        with self._lock:
            self._in_flight -= 1

    def reserve(self, n: int) -> bool:
        """Hold ``n`` images of the balance for a request; False when the balance is short."""
        with self._lock:
            remaining = self._remaining()
            if remaining is not None and remaining < n:
                return False
            self._reserved += n
            return True

    def unreserve(self, n: int) -> None:
        """Give back a reservation whose request was not billed."""
        with self._lock:
            self._reserved -= n

    def bill(
        self,
        request_id: str,
        endpoint: str,
        images: list[BilledImage],
        *,
        delivered: bool,
        fault: str | None,
        usage: dict[str, Any] | None = None,
    ) -> LedgerEntry:
        """Bill a request's images at the ledger's price (per image, or by ``usage``, the tokens
        its answer reports, when the ledger has token prices), consuming its reservation of
        ``len(images)``."""
        n = len(images)
        if self._token_prices is not None and usage is not None:
            text_rate, image_rate, output_rate = self._token_prices
            details = usage.get("input_tokens_details") or {}
            cost = (
                details.get("text_tokens", 0) * text_rate
                + details.get("image_tokens", 0) * image_rate
                + usage.get("output_tokens", 0) * output_rate
            ) / 1_000_000
            billing = "tokens"
        else:
            cost, billing = n * self._price, "per_image"
        entry = LedgerEntry(
            request_id=request_id,
            endpoint=endpoint,
            n=n,
            images=images,
            price_per_image=cost / n if n else self._price,
            cost=cost,
            usage=copy.deepcopy(usage),
            billing=billing,
            delivered=delivered,
            fault=fault,
            created=time.time(),
        )
        with self._lock:
            self._reserved -= len(images)
            self._billed_images += len(images)
            self._cost += entry["cost"]
            self._entries.append(entry)
            return copy.deepcopy(entry)

    def _remaining(self) -> int | None:
        """Balance left after billed and reserved images (lock held by the caller)."""
        if self._balance is None:
            return None
        return max(0, self._balance - self._billed_images - self._reserved)
