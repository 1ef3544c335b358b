"""The client's connection pool: httpcore's, with its bookkeeping linear in its connections.

httpx ignores a client's ``limits`` once it is given a transport, so the limits go to the
transport (:func:`pooled_transport`). With them, httpcore's pool keeps as many idle connections
as it is allowed, but it pays for them on every request and every response: it asks each
connection whether the server closed it (a ``select`` system call per idle connection) and,
for each idle one, counts every connection again (quadratic). At 64 calls at once that cost the
flow process more CPU than the calls themselves; with httpx's default limits instead (20 idle
connections) every request beyond the twentieth at once opened a new connection, with ``https``
a TLS handshake each.

:class:`LinearPool` does the same work once per connection: it drops closed connections, closes
idle ones beyond ``max_keepalive_connections``, and asks only the connection it is about to hand
out whether the server closed it (so a request is never sent on a dead connection, as before).
"""

from __future__ import annotations

import ssl

import httpcore
import httpx
from httpcore import AsyncConnectionInterface

__all__ = ["LinearPool", "pooled_transport"]


class LinearPool(httpcore.AsyncConnectionPool):
    """``httpcore.AsyncConnectionPool`` whose assignment of requests to connections costs one
    pass over the connections, and one "closed by the server?" check per request."""

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        closing: list[AsyncConnectionInterface] = []
        connections = [c for c in self._connections if not c.is_closed()]
        idle = [c for c in connections if c.is_idle()]
        surplus = len(idle) - self._max_keepalive_connections
        if surplus > 0:
            dropped = set(map(id, idle[:surplus]))
            closing.extend(idle[:surplus])
            connections = [c for c in connections if id(c) not in dropped]
        self._connections = connections
        for pool_request in [r for r in self._requests if r.is_queued()]:
            origin = pool_request.request.url.origin
            connection = self._reusable(origin, closing)
            if connection is None:
                if len(self._connections) >= self._max_connections:
                    spare = next((c for c in self._connections if c.is_idle()), None)
                    if spare is None:
                        continue  # every connection busy: the request waits for one
                    self._connections.remove(spare)
                    closing.append(spare)
                connection = self.create_connection(origin)
                self._connections.append(connection)
            pool_request.assign_to_connection(connection)
        return closing

    def _reusable(
        self, origin: httpcore.Origin, closing: list[AsyncConnectionInterface]
    ) -> AsyncConnectionInterface | None:
        """The first connection to ``origin`` free for a request; those the server closed or
        whose keep-alive ran out on the way go to ``closing``."""
        for connection in list(self._connections):
            if connection.can_handle_request(origin) and connection.is_available():
                if connection.has_expired():
                    self._connections.remove(connection)
                    closing.append(connection)
                    continue
                return connection
        return None


def pooled_transport(limits: httpx.Limits, verify: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    """httpx's transport (no retries: the client retries by its own rules) over a
    :class:`LinearPool` with ``limits``."""
    transport = httpx.AsyncHTTPTransport(retries=0, verify=verify, limits=limits)
    transport._pool = LinearPool(
        ssl_context=verify,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        retries=0,
    )
    return transport
