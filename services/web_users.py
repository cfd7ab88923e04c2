"""The web console's operators: add, list, remove, and check a password (Argon2id hashes)."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import TypedDict

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import WEB_ROLES, Tenant, WebUser
from services.errors import NotFound, ValidationFailed, valid_tenant_id

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,100}")
# NIST SP 800-63B's floor for a memorised secret; longer is the operator's choice.
MIN_PASSWORD_LENGTH = 8
# Argon2 hashes whatever it is given; a huge "password" would only cost CPU.
MAX_PASSWORD_LENGTH = 1_000
# argon2-cffi's defaults are RFC 9106's low-memory profile (Argon2id, 64 MiB, 3 passes).
_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash to check an unknown name's password against, made once when first needed.

    A wrong name then takes as long as a wrong password, so the sign-in page does
    not tell which names exist; made lazily, so importing the module costs nothing.
    """
    return _HASHER.hash("taskyard-no-such-user")


class WebUserInfo(TypedDict):
    """An operator as `taskyard web user list` shows it (never the hash)."""

    id: int
    name: str
    role: str
    tenant_ids: list[int] | None
    created_at: str


def web_user_info(user: WebUser) -> WebUserInfo:
    """The plain-data view of an operator."""
    return {
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "tenant_ids": None if user.tenant_ids is None else [int(t) for t in user.tenant_ids],
        "created_at": user.created_at.isoformat(),
    }


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        )


def add_web_user(
    session: Session,
    name: str,
    *,
    password: str,
    role: str,
    tenant_ids: Sequence[int] | None = None,
) -> WebUser:
    """Create an operator, or `ValidationFailed` naming the bad field (name taken included)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValidationFailed(
            f"user name {name[:100]!r} must be 1 to 100 letters, digits or . _ @ -"
        )
    if role not in WEB_ROLES:
        raise ValidationFailed(f"role must be one of {', '.join(WEB_ROLES)}, not {role!r}")
    _check_password(password)
    if tenant_ids is not None:
        if not all(valid_tenant_id(t) for t in tenant_ids):
            raise ValidationFailed("tenant ids are positive integers")
        known = set(session.scalars(select(Tenant.id).where(Tenant.id.in_(list(tenant_ids)))))
        unknown = sorted(set(tenant_ids) - known)
        if unknown:
            raise ValidationFailed(
                f"no tenant {', '.join(map(str, unknown))}: `taskyard tenant list` shows them"
            )
    if session.scalar(select(WebUser.id).where(WebUser.name == name)) is not None:
        raise ValidationFailed(f"a user named {name!r} exists already")
    user = WebUser(
        name=name,
        password_hash=_HASHER.hash(password),
        role=role,
        tenant_ids=None if tenant_ids is None else sorted(set(tenant_ids)),
    )
    session.add(user)
    session.flush()
    return user


def list_web_users(session: Session) -> list[WebUser]:
    """Every operator, by name."""
    return list(session.scalars(select(WebUser).order_by(WebUser.name)))


def get_web_user(session: Session, user_id: int) -> WebUser | None:
    """The operator with this id, if any."""
    return session.get(WebUser, user_id)


def find_web_user(session: Session, name: str) -> WebUser | None:
    """The operator named `name`, if any."""
    if not NAME_PATTERN.fullmatch(name):
        return None
    user: WebUser | None = session.scalar(select(WebUser).where(WebUser.name == name))
    return user


def remove_web_user(session: Session, name: str) -> None:
    """Delete an operator by name; their open sessions end at their next request."""
    user = find_web_user(session, name)
    if user is None:
        raise NotFound(f"no web user named {name!r}")
    session.delete(user)
    session.flush()


def authenticate(session: Session, name: str, password: str) -> WebUser | None:
    """The operator `name` if `password` is theirs, else None (as slow either way)."""
    user = find_web_user(session, name)
    candidate = password[:MAX_PASSWORD_LENGTH]
    try:
        _HASHER.verify(user.password_hash if user is not None else _dummy_hash(), candidate)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(candidate)
        session.flush()
    return user


def session_stamp(user: WebUser) -> str:
    """A short fingerprint of the user's hash: a session signed with another one is void.

    A new password (or a removed and re-added user) ends every session opened before.
    """
    return hashlib.sha256(f"{user.id}:{user.password_hash}".encode()).hexdigest()[:32]
