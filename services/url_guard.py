"""The one guard every outbound HTTP request passes: http(s) only, and no internal destinations."""

from __future__ import annotations

import http.cookiejar
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from services.errors import FetchFailed, FetchRefused
from services.redaction import redact_url

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_url(url: str, *, allow_private: bool) -> str:
    """Return `url` if Taskyard may send a request to it, else raise FetchRefused saying why.

    Every address the host resolves to is checked, not just the first: a name
    with one public and one loopback address would otherwise get through when
    the HTTP client picks the second. A name that does not resolve is a
    FetchFailed (DNS may come back). The client resolves the name again when it
    connects: a session from `public_only_session` checks the address it
    actually reached as well, which catches a DNS answer that changed between.
    """
    safe_url = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchRefused(f"{safe_url!r} is not a valid URL ({exc}); fix the URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise FetchRefused(
            f"{safe_url} uses scheme {parts.scheme or '(none)'!r}; "
            "only http and https URLs can be fetched, fix the URL"
        )
    host = parts.hostname
    if not host:
        raise FetchRefused(f"{safe_url} has no host name; fix the URL")
    if allow_private:
        return url
    for address in _resolve(host, port or DEFAULT_PORTS[scheme], safe_url):
        kind = private_kind(address)
        if kind is not None:
            raise FetchRefused(
                f"{safe_url} refused: host {host!r} resolves to {address}, a {kind} address; "
                "Taskyard only calls public addresses unless TASKYARD_HTTP_ALLOW_PRIVATE=true"
            )
    return url


def private_kind(address: IPAddress) -> str | None:
    """Why `address` is not a public destination ("loopback", "private", ...), or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return private_kind(address.ipv4_mapped)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        # Shared (100.64/10), documentation and other ranges that are not routed publicly.
        ("non-global", not address.is_global),
    )
    for kind, matches in checks:
        if matches:
            return kind
    return None


def _resolve(host: str, port: int, safe_url: str) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchFailed(
            f"{safe_url}: host {host!r} does not resolve ({exc}); check the host name"
        ) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).partition("%")[0]  # drop an IPv6 zone (fe80::1%eth0)
        addresses.append(ipaddress.ip_address(text))
    if not addresses:
        raise FetchFailed(f"{safe_url}: host {host!r} has no address; check its DNS records")
    return addresses


def check_peer(host: str, address: str) -> None:
    """Refuse a connection to `host` that reached a non-public `address` (FetchRefused)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    kind = private_kind(ip)
    if kind is not None:
        raise FetchRefused(
            f"connection to {host!r} reached {ip}, a {kind} address, although the name "
            "resolved to public ones when it was checked (a DNS answer that changed); "
            "Taskyard only calls public addresses unless TASKYARD_HTTP_ALLOW_PRIVATE=true"
        )


class _PeerChecked:
    """A connection that checks the address its socket reached before it sends anything."""

    host: str

    def _new_conn(self) -> Any:
        sock = super()._new_conn()  # type: ignore[misc]
        try:
            check_peer(self.host, str(sock.getpeername()[0]))
        except BaseException:
            sock.close()
            raise
        return sock


class _PeerCheckedHTTPConnection(_PeerChecked, HTTPConnection):
    pass


class _PeerCheckedHTTPSConnection(_PeerChecked, HTTPSConnection):
    pass


class _PeerCheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PeerCheckedHTTPConnection


class _PeerCheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PeerCheckedHTTPSConnection


class PublicOnlyAdapter(HTTPAdapter):
    """requests' adapter whose direct connections must reach a public address.

    `check_url` looks the name up before a request; the connection looks it up
    again.  A DNS server that answers a public address to the first and
    127.0.0.1 to the second (DNS rebinding) gets past the first check, not this
    one: the socket's peer is checked once connected, before a byte is sent.
    A proxied request's peer is the proxy, so it keeps the first check only.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _PeerCheckedHTTPPool,
            "https": _PeerCheckedHTTPSPool,
        }


_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])


def public_only_session(*, allow_private: bool) -> requests.Session:
    """An HTTP session for outbound calls: peer-checked unless private addresses are allowed."""
    session = requests.Session()
    # One session serves every tenant's calls in a process: a cookie one tenant's
    # server set must never travel with another tenant's request.
    session.cookies.set_policy(_NO_COOKIES)
    if not allow_private:
        adapter = PublicOnlyAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session
