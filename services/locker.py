"""A tenant's locker: secrets encrypted at rest with Fernet under `TASKYARD_SECRET_KEYS`.

Fernet has no associated data, so each plaintext is prefixed with its tenant
id and key and checked on decrypt: a row copied to another tenant, or renamed
to another key, fails to decrypt instead of handing out someone else's secret.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypedDict

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import LockerEntry
from services.errors import NotFound, PermanentError, ValidationFailed

KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
# Separates the binding (tenant id, key) from the value inside the plaintext;
# a key cannot contain it, so the binding is unambiguous.
_SEPARATOR = "\n"
GENERATE_HINT = (
    "generate one with: python -c "
    '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


class Secret:
    """A secret value that hides itself: repr and str are `Secret('***')`; use `.reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plaintext; only call this where the value is used, never to log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled or serialised; reveal() it deliberately")


class NoSecretKey(PermanentError):
    """The locker was used while `TASKYARD_SECRET_KEYS` is empty."""

    def __init__(self) -> None:
        super().__init__(
            f"no secret key configured: set TASKYARD_SECRET_KEYS ({GENERATE_HINT})",
            reason="no_secret_key",
        )


class SecretUnreadable(PermanentError):
    """A stored secret cannot be decrypted with the configured keys, or is bound elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="secret_unreadable")


def validate_key(key: str) -> str:
    """Return `key` when it is a valid locker key name; raise `ValidationFailed` otherwise."""
    if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
        shown = key[:60] if isinstance(key, str) else type(key).__name__
        raise ValidationFailed(
            f"invalid locker key {shown!r}: use 1-200 characters from A-Z a-z 0-9 _ . : -"
        )
    return key


def build_fernet(secret_keys: Sequence[str]) -> MultiFernet:
    """A MultiFernet over the keys (the first encrypts); `NoSecretKey` when there are none."""
    if not secret_keys:
        raise NoSecretKey()
    try:
        return MultiFernet([Fernet(key) for key in secret_keys])
    except (ValueError, TypeError) as exc:
        # Never echo the key itself.
        raise PermanentError(
            f"TASKYARD_SECRET_KEYS holds a malformed key: each must be a urlsafe base64 "
            f"32-byte Fernet key ({GENERATE_HINT})",
            reason="no_secret_key",
        ) from exc


def _binding(tenant_id: int, key: str) -> str:
    return f"taskyard-locker:{tenant_id}:{key}{_SEPARATOR}"


def _encrypt(fernet: MultiFernet, tenant_id: int, key: str, value: str) -> str:
    return fernet.encrypt((_binding(tenant_id, key) + value).encode()).decode()


def _decrypt(fernet: MultiFernet, tenant_id: int, key: str, ciphertext: str) -> str:
    try:
        plaintext = fernet.decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable(
            f"locker entry {key!r} of tenant {tenant_id} cannot be decrypted with the "
            "configured TASKYARD_SECRET_KEYS: add the key it was stored with"
        ) from exc
    binding = _binding(tenant_id, key)
    if not plaintext.startswith(binding):
        raise SecretUnreadable(
            f"locker entry {key!r} of tenant {tenant_id} was stored for another tenant or "
            "key; store it again with set_secret"
        )
    return plaintext[len(binding) :]


def set_secret(
    session: Session, tenant_id: int, key: str, value: str, *, secret_keys: Sequence[str]
) -> None:
    """Store (or replace) the secret `key` of a tenant, encrypted with the first key."""
    validate_key(key)
    if not isinstance(value, str):
        raise ValidationFailed(f"locker entry {key!r}: the value must be a string")
    ciphertext = _encrypt(build_fernet(secret_keys), tenant_id, key, value)
    entry = session.scalars(
        select(LockerEntry).where(LockerEntry.tenant_id == tenant_id, LockerEntry.key == key)
    ).one_or_none()
    if entry is None:
        session.add(LockerEntry(tenant_id=tenant_id, key=key, ciphertext=ciphertext))
    else:
        entry.ciphertext = ciphertext
    session.flush()


def get_secret(session: Session, tenant_id: int, key: str, *, secret_keys: Sequence[str]) -> Secret:
    """The secret `key` of a tenant; `NotFound` (naming tenant and key) when it is not stored."""
    validate_key(key)
    fernet = build_fernet(secret_keys)
    ciphertext = session.scalars(
        select(LockerEntry.ciphertext).where(
            LockerEntry.tenant_id == tenant_id, LockerEntry.key == key
        )
    ).one_or_none()
    if ciphertext is None:
        raise NotFound(f"tenant {tenant_id} has no locker entry {key!r}")
    return Secret(_decrypt(fernet, tenant_id, key, ciphertext))


def list_secret_keys(session: Session, tenant_id: int) -> list[str]:
    """The names (never the values) of a tenant's secrets, sorted."""
    return list(
        session.scalars(
            select(LockerEntry.key)
            .where(LockerEntry.tenant_id == tenant_id)
            .order_by(LockerEntry.key)
        )
    )


def delete_secret(session: Session, tenant_id: int, key: str) -> bool:
    """Delete the secret `key` of a tenant; whether there was one."""
    validate_key(key)
    result = session.execute(
        delete(LockerEntry).where(LockerEntry.tenant_id == tenant_id, LockerEntry.key == key)
    )
    return bool(getattr(result, "rowcount", 0))


class ReencryptSummary(TypedDict):
    """What `reencrypt_all` did: counts, and the names (never values) it could not read."""

    reencrypted: int
    unreadable: int
    # At most MAX_UNREADABLE_LISTED "tenant:key" names, for the job record.
    unreadable_entries: list[str]


# Enough to find the culprits; bounded so the job record stays small.
MAX_UNREADABLE_LISTED = 20


def reencrypt_all(
    session: Session, *, secret_keys: Sequence[str], batch_size: int = 500
) -> ReencryptSummary:
    """Re-encrypt every entry under the first key (after a rotation), in batches of ids.

    Entries already under the first key are rewritten too (harmless).  An
    entry no configured key can read is left as it is and counted, so one bad
    row does not block a rotation; drop an old key only once `unreadable` is 0.
    """
    fernet = build_fernet(secret_keys)
    summary: ReencryptSummary = {"reencrypted": 0, "unreadable": 0, "unreadable_entries": []}
    last_id = 0
    while True:
        entries = list(
            session.scalars(
                select(LockerEntry)
                .where(LockerEntry.id > last_id)
                .order_by(LockerEntry.id)
                .limit(batch_size)
            )
        )
        if not entries:
            return summary
        for entry in entries:
            last_id = entry.id
            try:
                entry.ciphertext = fernet.rotate(entry.ciphertext.encode()).decode()
            except InvalidToken:
                summary["unreadable"] += 1
                if len(summary["unreadable_entries"]) < MAX_UNREADABLE_LISTED:
                    summary["unreadable_entries"].append(f"{entry.tenant_id}:{entry.key}")
                continue
            summary["reencrypted"] += 1
        session.flush()
