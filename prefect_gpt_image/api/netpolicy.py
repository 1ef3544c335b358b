"""Which hosts an input URL may reach, and fetching it so the address checked is the one connected to.

An input URL comes from a run's parameters (a reference, a batch's image list, a manifest's
column, a mask URI), so whoever can start a run chooses it. Fetched blindly, it would let them make
the worker call internal services: the cloud metadata service at 169.254.169.254, an admin port
on loopback, a database on the private network. So by default a URL whose host is, or resolves
to, a loopback, private, link-local, shared (100.64.0.0/10), unique-local, unspecified, multicast
or reserved address is refused before any connection is attempted; named hosts and networks may
be allowed on purpose (:class:`HostPolicy`, for an internal image server).

Every address the name resolves to is checked (one bad answer refuses the URL: DNS may answer
differently on the next lookup), and the connection goes to the very address that was checked,
with the name sent as the ``Host`` header and the TLS server name (SNI, and the certificate is
checked against the name): a name cannot resolve to a public address for the check and to an
internal one for the connection. Redirects are followed by hand, each hop checked the same way.
Every spelling of an address (``localhost``, ``[::1]``, ``0.0.0.0``, ``2130706433``,
``0x7f000001``, ``0177.0.0.1``, ``127.1``, IPv4-mapped IPv6, trailing dots) is either refused as
written or resolved by the system resolver to the address it means, which is then checked.

A refusal's message names the URL and why; it never depends on how the refused host would have
answered, since it is never contacted.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from .errors import GptImageError

__all__ = [
    "ALLOW_PRIVATE_HOSTS_ENV",
    "HostPolicy",
    "IPAddress",
    "RefusedURLError",
    "URLFetchError",
    "address_kind",
    "checked_addresses",
    "fetch_checked",
    "safe_url",
]

ALLOW_PRIVATE_HOSTS_ENV = "GPT_IMAGE_ALLOW_PRIVATE_HOSTS"
"""Environment variable: comma-separated host names, addresses or networks input URLs may reach
although they are not public (see :class:`HostPolicy`)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5
"""Redirect hops followed at most for one input URL (each one checked)."""

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RefusedURLError(GptImageError, ValueError):
    """The URL (or a redirect hop) names a host the policy refuses; nothing was sent to it."""


class URLFetchError(GptImageError, ValueError):
    """An allowed URL could not be fetched as an image (an error status, too large, a redirect
    loop): no retry can help."""


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` is no public address (``loopback``, ``private``, ``link-local``, ``shared``,
    ``unique-local``, ``unspecified``, ``multicast``, ``reserved``), or None when it is public.

    An IPv6 address that carries an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, 6to4
    ``2002:aabb:ccdd::``) is judged by the IPv4 address (NAT64 ``64:ff9b::/96`` and Teredo lie in
    reserved and protocol ranges, refused as such).
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None and (kind := address_kind(embedded)) is not None:
            return kind
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared"
    if isinstance(address, ipaddress.IPv6Address) and address in ipaddress.IPv6Network("fc00::/7"):
        return "unique-local"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def _host_name(host: str) -> str:
    """A host as compared with the allowed names: lower case, no brackets, no trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class HostPolicy:
    """Hosts allowed although they are not public: names (``images.internal``, matched as the URL
    writes the host, case and a trailing dot aside), addresses (``10.0.0.5``) and networks
    (``10.1.0.0/16``), matched against every address the host resolves to. Empty by default:
    only public addresses."""

    names: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostPolicy:
        """A policy from entries (names, addresses or networks); ValueError for an empty one."""
        names: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            value = _host_name(entry)
            if not value:
                continue
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                names.add(value)
        return cls(frozenset(names), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        """Whether ``address`` (one that ``host`` resolved to) may be reached."""
        if address_kind(address) is None:
            return True
        if _host_name(host) in self.names:
            return True
        return any(address in network for network in self.networks)

    def describe(self) -> list[str]:
        """The entries, sorted (for messages and the settings block)."""
        return sorted([*self.names, *(str(n) for n in self.networks)])


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def checked_addresses(url: str, policy: HostPolicy) -> list[IPAddress]:
    """The addresses the URL's host resolves to (a literal address as is, a name through the
    system resolver), every one allowed by ``policy``; RefusedURLError when one is not, before
    anything is sent to any of them."""
    parts = urlsplit(url)
    shown = safe_url(url)
    if parts.scheme not in ("http", "https"):
        raise RefusedURLError(f"{shown}: only http(s) URLs are fetched")
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedURLError(f"{shown}: the port is not a number") from None
    if not host:
        raise RefusedURLError(f"{shown}: the URL names no host")
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise RefusedURLError(f"{shown}: host {host} does not resolve") from None
        found = (_literal(str(info[4][0]).split("%", 1)[0]) for info in infos)
        addresses = list(dict.fromkeys(a for a in found if a is not None))
        if not addresses:
            raise RefusedURLError(f"{shown}: host {host} does not resolve")
    for address in addresses:
        if not policy.allows(host, address):
            how = "is" if literal is not None else f"resolves to {address}, which is"
            kind = address_kind(address) or ""
            article = "an" if kind == "unspecified" else "a"
            raise RefusedURLError(
                f"{shown}: refused, host {host} {how} {article} {kind} address; it was not "
                f"contacted (a private host can be allowed by name: setting allowed_private_hosts "
                f"or ${ALLOW_PRIVATE_HOSTS_ENV})"
            )
    return addresses


def fetch_checked(
    url: str,
    *,
    policy: HostPolicy,
    max_bytes: int,
    timeout: httpx.Timeout,
    max_redirects: int = MAX_REDIRECTS,
) -> bytes:
    """GET ``url`` (under ``max_bytes``), each hop's host checked by :func:`checked_addresses` and
    connected to at the checked address.

    Raises RefusedURLError (a refused host: never contacted), URLFetchError (an allowed host
    answered no image: an error status, too large, too many redirects), or httpx.HTTPError
    (the transport failed: a retry may help).
    """
    current = url
    with httpx.Client(trust_env=False, timeout=timeout, follow_redirects=False) as client:
        for _ in range(max_redirects + 1):
            addresses = checked_addresses(current, policy)
            location = _get(client, current, addresses, max_bytes)
            if isinstance(location, bytes):
                return location
            following = urljoin(current, location)
            if urlsplit(following).scheme not in ("http", "https"):
                raise RefusedURLError(f"{safe_url(url)}: redirected to a {urlsplit(following).scheme}: URL")
            current = following
    raise URLFetchError(f"{safe_url(url)}: more than {max_redirects} redirects")


def _get(client: httpx.Client, url: str, addresses: list[IPAddress], max_bytes: int) -> bytes | str:
    """The body of ``url`` fetched from the first of ``addresses`` that connects, or the
    ``Location`` of a redirect."""
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL:
        raise URLFetchError(f"{safe_url(url)}: not a valid URL") from None
    host_header = target.netloc.decode("ascii")
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request(
            "GET",
            target.copy_with(host=str(address)),
            headers={"Host": host_header},
            extensions=extensions,
        )
        try:
            response = client.send(request, stream=True)
        except httpx.ConnectError as exc:  # another address of the name may answer
            failure = exc
            continue
        try:
            return _body(response, url, max_bytes)
        finally:
            response.close()
    assert failure is not None
    raise failure


def _body(response: httpx.Response, url: str, max_bytes: int) -> bytes | str:
    if response.status_code in _REDIRECTS and response.headers.get("location"):
        return str(response.headers["location"])
    if response.status_code != 200:
        raise URLFetchError(f"GET {safe_url(url)} answered HTTP {response.status_code}")
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total >= max_bytes:
            raise URLFetchError(f"{safe_url(url)} is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def safe_url(url: str) -> str:
    """``url`` without query and user info (they may hold credentials, e.g. a presigned URL)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}{':' + str(port) if port else ''}{parts.path}"
