"""The outbound URL guard: schemes and destinations it refuses; it only resolves, never connects."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer
from urllib3.connection import HTTPSConnection

import services.http
from services.errors import FetchFailed, FetchRefused
from services.http import FetchLimits, fetch_json
from services.url_guard import PublicOnlyAdapter, check_peer, check_url, public_only_session
from settings import SettingsError, load_settings

PUBLIC = "93.184.216.34"


def fake_resolver(*addresses: str) -> Any:
    """A getaddrinfo that answers `addresses` for any name."""

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in addresses
        ]

    return getaddrinfo


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://files.example/x",
        "gopher://gopher.example/1",
        "feeds.example/feed.json",
        "javascript:alert(1)",
    ],
)
def test_scheme_other_than_http_is_refused(url: str) -> None:
    with pytest.raises(FetchRefused, match="only http and https"):
        check_url(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/x", "loopback"),
        ("http://127.8.9.10:8080/x", "loopback"),
        ("http://[::1]/x", "loopback"),
        ("http://10.1.2.3/x", "private"),
        ("http://172.16.0.1/x", "private"),
        ("http://172.31.255.254/x", "private"),
        ("https://192.168.1.1/x", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://[fc00::1]/x", "private"),
        ("http://[::ffff:127.0.0.1]/x", "loopback"),
        ("http://[::ffff:10.0.0.1]/x", "private"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://[::]/x", "unspecified"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://240.0.0.1/x", "reserved"),
        ("http://100.64.0.1/x", "non-global"),
        ("http://localhost:8000/x", "loopback"),
    ],
)
def test_internal_destination_is_refused(url: str, kind: str) -> None:
    with pytest.raises(FetchRefused) as caught:
        check_url(url, allow_private=False)

    message = str(caught.value)
    assert f"a {kind} address" in message
    assert "TASKYARD_HTTP_ALLOW_PRIVATE" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://[::1]/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/x",
        "http://localhost:8000/x",
    ],
)
def test_internal_destination_is_allowed_when_configured(url: str) -> None:
    assert check_url(url, allow_private=True) == url


def test_public_address_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver(PUBLIC))

    assert check_url("https://api.example/orgs", allow_private=False) == "https://api.example/orgs"


def test_any_internal_address_of_a_name_refuses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver(PUBLIC, "10.0.0.7"))

    with pytest.raises(FetchRefused, match=re.escape("resolves to 10.0.0.7, a private address")):
        check_url("https://api.example/orgs", allow_private=False)


def test_password_is_not_in_the_refusal() -> None:
    with pytest.raises(FetchRefused) as caught:
        check_url("http://alice:s3cret@127.0.0.1/x#frag", allow_private=False)

    assert "s3cret" not in str(caught.value)
    assert "http://127.0.0.1/x" in str(caught.value)


@pytest.mark.parametrize("url", ["http:///x", "http://[::1/x", "http://host.example:99999/x"])
def test_malformed_url_is_refused(url: str) -> None:
    with pytest.raises(FetchRefused):
        check_url(url, allow_private=False)


def test_name_that_does_not_resolve_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)

    with pytest.raises(FetchFailed, match="does not resolve"):
        check_url("https://nowhere.example/x", allow_private=False)


def test_fetch_json_refuses_a_private_feed_before_sending(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/feed").respond_with_json([])
    limits = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=1_000)

    with requests.Session() as http, pytest.raises(FetchRefused, match="loopback"):
        fetch_json(http, httpserver.url_for("/feed"), limits)

    assert httpserver.log == []


def test_redirect_to_an_internal_address_is_refused(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hop (the test server) is let through; the redirect's target is checked for real."""
    first = httpserver.url_for("/start")
    real_check = services.http.check_url
    checked: list[str] = []

    def check(url: str, *, allow_private: bool) -> str:
        checked.append(url)
        return url if url == first else real_check(url, allow_private=allow_private)

    monkeypatch.setattr(services.http, "check_url", check)
    httpserver.expect_request("/start").respond_with_data(
        "", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    )
    limits = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=1_000)

    with requests.Session() as http, pytest.raises(FetchRefused, match="link-local"):
        fetch_json(http, first, limits)

    assert checked == [first, "http://169.254.169.254/latest/meta-data/"]


def test_redirect_within_allowed_hosts_is_followed(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/old").respond_with_data(
        "", status=301, headers={"Location": "/new"}
    )
    httpserver.expect_request("/new").respond_with_json([{"id": 1}])
    limits = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=1_000, allow_private=True)

    with requests.Session() as http:
        assert fetch_json(http, httpserver.url_for("/old"), limits) == [{"id": 1}]


def test_redirect_loop_is_refused(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/loop").respond_with_data(
        "", status=302, headers={"Location": "/loop"}
    )
    limits = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=1_000, allow_private=True)

    with requests.Session() as http, pytest.raises(FetchRefused, match="redirected more than"):
        fetch_json(http, httpserver.url_for("/loop"), limits)


def test_allow_private_setting_defaults_to_false() -> None:
    assert load_settings({}).http_allow_private is False
    assert load_settings({"TASKYARD_HTTP_ALLOW_PRIVATE": "true"}).http_allow_private is True
    assert load_settings({"TASKYARD_HTTP_ALLOW_PRIVATE": "0"}).http_allow_private is False


def test_allow_private_setting_refuses_other_words() -> None:
    with pytest.raises(SettingsError, match="TASKYARD_HTTP_ALLOW_PRIVATE='maybe' is invalid"):
        load_settings({"TASKYARD_HTTP_ALLOW_PRIVATE": "maybe"})


def rebinding_resolver(first: str, then: str) -> Any:
    """A getaddrinfo whose first answer is `first` and every later one `then` (DNS rebinding)."""
    answers = iter([first])

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return fake_resolver(next(answers, then))(host, port)

    return getaddrinfo


@pytest.fixture
def rebinding_feed(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A feed URL whose name resolves to a public address for the check, then to this machine."""
    httpserver.expect_request("/feed").respond_with_json([])
    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver(PUBLIC, "127.0.0.1"))
    return f"http://rebind.example:{httpserver.port}/feed"


LIMITS = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=1_000)


def test_a_name_that_rebinds_to_loopback_after_the_check_is_refused_before_sending(
    rebinding_feed: str, httpserver: HTTPServer
) -> None:
    # When a worker's session fetches it, the connection's peer is refused
    with (
        public_only_session(allow_private=False) as http,
        pytest.raises(FetchRefused, match=re.escape("reached 127.0.0.1, a loopback address")),
    ):
        fetch_json(http, rebinding_feed, LIMITS)

    # And the server never heard the request
    assert httpserver.log == []


def test_a_plain_session_would_have_sent_it(rebinding_feed: str, httpserver: HTTPServer) -> None:
    # The same rebinding against a session without the peer check reaches the server.
    with requests.Session() as http:
        assert fetch_json(http, rebinding_feed, LIMITS) == []
    assert len(httpserver.log) == 1


def test_with_private_addresses_allowed_the_session_connects_anywhere(
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_request("/feed").respond_with_json([1])
    limits = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=1_000, allow_private=True)

    with public_only_session(allow_private=True) as http:
        assert fetch_json(http, httpserver.url_for("/feed"), limits) == [1]


def test_the_peer_check_covers_https_connections_too() -> None:
    # HTTPS connections open their socket with the same checked method as HTTP ones,
    # whose refusal the rebinding test above shows.
    pools = PublicOnlyAdapter().poolmanager.pool_classes_by_scheme
    https, http = pools["https"].ConnectionCls, pools["http"].ConnectionCls
    assert issubclass(https, HTTPSConnection)
    assert https._new_conn is http._new_conn
    assert https._new_conn is not HTTPSConnection._new_conn
    with pytest.raises(FetchRefused, match="a private address"):
        check_peer("api.example", "10.0.0.7")
    check_peer("api.example", PUBLIC)
