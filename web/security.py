"""The console's defences that are not about who signed in: CSRF, headers, sign-in throttling."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from urllib.parse import urlsplit

from flask import Response, abort, request, session

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# No inline script or style, no plugin, no framing, forms only to the console itself.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token() -> str:
    """The session's CSRF token (made on first use); every form posts it back."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def check_csrf() -> None:
    """Refuse (400) a state-changing request without the session's token or from elsewhere.

    The token is the defence; a foreign Origin is refused as well, for browsers
    that send one.
    """
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        abort(403, description="cross-site request refused")
    expected = session.get(CSRF_FIELD)
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not hmac.compare_digest(expected, sent):
        abort(
            400,
            description="the form's security token is missing or stale: reload the page and "
            "try again",
        )


def add_security_headers(response: Response) -> Response:
    """Every answer's security headers; pages are never cached (they show live state)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


class SignInLimiter:
    """Failed sign-ins per user name and per address in a sliding window; in memory.

    Past `per_name` failures for a name, or `per_address` from an address, within
    `window_seconds`, sign-in is refused (429) until the oldest failure ages out,
    right password or not. Kept per process: a restart forgets, which only
    lets an attacker try a few more times.
    """

    # Keys tracked at most; the oldest are forgotten first (a flood of names cannot fill memory).
    MAX_KEYS = 10_000

    def __init__(
        self, *, per_name: int = 5, per_address: int = 20, window_seconds: float = 900.0
    ) -> None:
        self.per_name = per_name
        self.per_address = per_address
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        found = self._failures.get(key)
        if found is None:
            return deque()
        while found and found[0] <= now - self.window:
            found.popleft()
        if not found:
            del self._failures[key]
        return found

    def wait_seconds(self, name: str, address: str, *, now: float | None = None) -> float:
        """How long sign-in stays refused for this name or address (0: it is allowed)."""
        moment = time.monotonic() if now is None else now
        waits = [0.0]
        with self._lock:
            for key, limit in ((f"n:{name}", self.per_name), (f"a:{address}", self.per_address)):
                recent = self._recent(key, moment)
                if len(recent) >= limit:
                    waits.append(recent[0] + self.window - moment)
        return max(waits)

    def failed(self, name: str, address: str, *, now: float | None = None) -> None:
        """Count one failed sign-in for the name and the address."""
        moment = time.monotonic() if now is None else now
        with self._lock:
            for key in (f"n:{name}", f"a:{address}"):
                self._failures.setdefault(key, deque()).append(moment)
            while len(self._failures) > self.MAX_KEYS:
                del self._failures[next(iter(self._failures))]

    def succeeded(self, name: str) -> None:
        """Forget a name's failures once its password was given."""
        with self._lock:
            self._failures.pop(f"n:{name}", None)
