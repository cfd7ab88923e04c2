"""Signing in and out, and who is signed in: every page but these needs an operator."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from db.models import WebUser
from services.web_users import authenticate, find_web_user, get_web_user, session_stamp
from web.console import Operator, console
from web.security import CSRF_FIELD, SignInLimiter

F = TypeVar("F", bound=Callable[..., Any])
bp = Blueprint("auth", __name__)
# Endpoints open without signing in.
PUBLIC_ENDPOINTS = frozenset({"static", "auth.sign_in"})
MAX_NAME_FIELD = 200
LIMITER = "taskyard_limiter"


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this console only, never another site."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return url_for("overview.overview")


def load_operator() -> BaseResponse | None:
    """Before every request: the operator of a valid, unexpired session, or off to sign in."""
    g.operator = None
    header = console().settings.web_proxy_user_header
    if header and request.headers.get(header, "").strip():
        # The authenticating proxy's word (opt-in) decides, whatever the session says.
        name = request.headers[header].strip()[:MAX_NAME_FIELD]
        g.operator = console().transact(lambda s: _operator_named(s, name))
        if g.operator is None:
            abort(
                403,
                description=f"the proxy signed in {name!r}, who is not a web user: add them "
                "with `taskyard web user add NAME --role admin|viewer`",
            )
        return None
    user_id, stamp, since = session.get("user_id"), session.get("stamp"), session.get("since")
    if isinstance(user_id, int) and isinstance(stamp, str) and isinstance(since, int | float):
        lifetime = console().settings.web_session_minutes * 60
        if 0 <= time.time() - since <= lifetime:
            user = console().transact(lambda s: _operator(s, user_id, stamp))
            g.operator = user
        if g.operator is None:
            # Expired, revoked or from a removed user: start over, with a fresh token.
            session.clear()
    if g.operator is not None or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if request.headers.get("HX-Request"):
        # htmx swaps the answer into the page; tell it to load the sign-in page instead.
        answer = Response("sign in again", status=401)
        answer.headers["HX-Redirect"] = url_for("auth.sign_in")
        return answer
    if request.method != "GET":
        abort(401, description="sign in first")
    return redirect(url_for("auth.sign_in", next=request.full_path.rstrip("?")))


def _operator(session_: Any, user_id: int, stamp: str) -> Operator | None:
    user = get_web_user(session_, user_id)
    if user is None or session_stamp(user) != stamp:
        return None
    return _as_operator(user)


def _operator_named(session_: Any, name: str) -> Operator | None:
    user = find_web_user(session_, name)
    return None if user is None else _as_operator(user)


def _as_operator(user: WebUser) -> Operator:
    scope = None if user.tenant_ids is None else frozenset(int(t) for t in user.tenant_ids)
    return Operator(id=user.id, name=user.name, role=user.role, tenant_ids=scope)


def admin_only(view: F) -> F:
    """Refuse (403) the view to an operator who is not an admin."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if g.operator is None or not g.operator.is_admin:
            abort(403, description="only an admin may do this; you may read")
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]


def limiter() -> SignInLimiter:
    """The app's sign-in throttle."""
    found: SignInLimiter = current_app.extensions[LIMITER]
    return found


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """The sign-in form; on success a new session (new token), then where the operator was going."""
    target = request.values.get("next")
    if request.method == "GET":
        if g.operator is not None:
            return redirect(_safe_next(target))
        return render_template("sign_in.html", next=target, error=None)
    name = request.form.get("name", "")[:MAX_NAME_FIELD]
    password = request.form.get("password", "")
    address = request.remote_addr or "unknown"
    wait = limiter().wait_seconds(name, address)
    if wait > 0:
        error = f"too many failed sign-ins: try again in {int(wait // 60) + 1} minute(s)"
        return render_template("sign_in.html", next=target, error=error), 429
    user = console().transact(lambda s: _checked(s, name, password))
    if user is None:
        limiter().failed(name, address)
        return render_template("sign_in.html", next=target, error="wrong name or password"), 401
    limiter().succeeded(name)
    user_id, stamp = user
    session.clear()  # a new session: nothing set before signing in carries over
    session.permanent = True
    session.update(user_id=user_id, stamp=stamp, since=time.time())
    return redirect(_safe_next(target))


def _checked(session_: Any, name: str, password: str) -> tuple[int, str] | None:
    user = authenticate(session_, name, password)
    return None if user is None else (user.id, session_stamp(user))


@bp.route("/sign-out", methods=["POST"])
def sign_out() -> BaseResponse:
    """End the session."""
    session.clear()
    session.pop(CSRF_FIELD, None)
    return redirect(url_for("auth.sign_in"))
