"""The locker: encrypted at rest, bound to (tenant, key), rotation, and values that hide."""

from __future__ import annotations

import pickle

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import LockerEntry, Tenant
from services import locker
from services.errors import NotFound, PermanentError, ValidationFailed
from services.tenants import create_tenant

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def test_a_stored_secret_reads_back_and_is_not_stored_in_clear(
    sqlite_session: Session, tenant: Tenant
) -> None:
    locker.set_secret(sqlite_session, tenant.id, "github.token", "ghp_s3cret", secret_keys=[KEY_A])
    stored = sqlite_session.scalars(select(LockerEntry.ciphertext)).one()
    assert "ghp_s3cret" not in stored
    secret = locker.get_secret(sqlite_session, tenant.id, "github.token", secret_keys=[KEY_A])
    assert secret.reveal() == "ghp_s3cret"


def test_set_secret_replaces_the_value(sqlite_session: Session, tenant: Tenant) -> None:
    locker.set_secret(sqlite_session, tenant.id, "k", "one", secret_keys=[KEY_A])
    locker.set_secret(sqlite_session, tenant.id, "k", "two", secret_keys=[KEY_A])
    assert locker.get_secret(sqlite_session, tenant.id, "k", secret_keys=[KEY_A]).reveal() == "two"
    assert locker.list_secret_keys(sqlite_session, tenant.id) == ["k"]


def test_the_value_never_shows_in_repr_str_or_pickle() -> None:
    secret = locker.Secret("hunter2")
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "Secret('***')"
    assert "hunter2" not in f"{secret} {[secret]} {dict(v=secret)}"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_no_key_configured_is_a_clear_error(sqlite_session: Session, tenant: Tenant) -> None:
    with pytest.raises(locker.NoSecretKey, match="set TASKYARD_SECRET_KEYS"):
        locker.set_secret(sqlite_session, tenant.id, "k", "v", secret_keys=[])
    with pytest.raises(locker.NoSecretKey):
        locker.get_secret(sqlite_session, tenant.id, "k", secret_keys=())


def test_a_missing_entry_names_tenant_and_key(sqlite_session: Session, tenant: Tenant) -> None:
    with pytest.raises(NotFound, match=rf"tenant {tenant.id} has no locker entry 'nope'"):
        locker.get_secret(sqlite_session, tenant.id, "nope", secret_keys=[KEY_A])


@pytest.mark.parametrize("key", ["", "a" * 201, "has space", "slash/no", "é", "new\nline"])
def test_bad_key_names_are_refused(sqlite_session: Session, tenant: Tenant, key: str) -> None:
    with pytest.raises(ValidationFailed, match="invalid locker key"):
        locker.set_secret(sqlite_session, tenant.id, key, "v", secret_keys=[KEY_A])


def test_a_row_copied_to_another_tenant_does_not_decrypt(
    sqlite_session: Session, tenant: Tenant
) -> None:
    other = create_tenant(sqlite_session, "other")
    locker.set_secret(sqlite_session, tenant.id, "k", "mine", secret_keys=[KEY_A])
    stolen = sqlite_session.scalars(select(LockerEntry.ciphertext)).one()
    sqlite_session.add(LockerEntry(tenant_id=other.id, key="k", ciphertext=stolen))
    sqlite_session.add(LockerEntry(tenant_id=tenant.id, key="k2", ciphertext=stolen))
    sqlite_session.flush()
    with pytest.raises(locker.SecretUnreadable, match="another tenant or key") as caught:
        locker.get_secret(sqlite_session, other.id, "k", secret_keys=[KEY_A])
    assert "mine" not in str(caught.value)
    with pytest.raises(locker.SecretUnreadable):
        locker.get_secret(sqlite_session, tenant.id, "k2", secret_keys=[KEY_A])


def test_rotation_old_key_still_decrypts_then_reencrypt_moves_to_new(
    sqlite_session: Session, tenant: Tenant
) -> None:
    locker.set_secret(sqlite_session, tenant.id, "a", "va", secret_keys=[KEY_A])
    locker.set_secret(sqlite_session, tenant.id, "b", "vb", secret_keys=[KEY_A])
    rotated = [KEY_B, KEY_A]
    assert locker.get_secret(sqlite_session, tenant.id, "a", secret_keys=rotated).reveal() == "va"

    summary = locker.reencrypt_all(sqlite_session, secret_keys=rotated, batch_size=1)
    assert summary == {"reencrypted": 2, "unreadable": 0, "unreadable_entries": []}

    for key, value in (("a", "va"), ("b", "vb")):
        got = locker.get_secret(sqlite_session, tenant.id, key, secret_keys=[KEY_B])
        assert got.reveal() == value
    with pytest.raises(locker.SecretUnreadable, match="cannot be decrypted"):
        locker.get_secret(sqlite_session, tenant.id, "a", secret_keys=[KEY_A])


def test_reencrypt_skips_and_names_entries_no_key_can_read(
    sqlite_session: Session, tenant: Tenant
) -> None:
    locker.set_secret(sqlite_session, tenant.id, "a", "va", secret_keys=[KEY_A])
    locker.set_secret(sqlite_session, tenant.id, "b", "vb", secret_keys=[KEY_B])
    summary = locker.reencrypt_all(sqlite_session, secret_keys=[KEY_B])
    assert summary == {
        "reencrypted": 1,
        "unreadable": 1,
        "unreadable_entries": [f"{tenant.id}:a"],
    }
    assert locker.get_secret(sqlite_session, tenant.id, "a", secret_keys=[KEY_A]).reveal() == "va"


def test_delete_secret_reports_whether_one_existed(sqlite_session: Session, tenant: Tenant) -> None:
    locker.set_secret(sqlite_session, tenant.id, "a", "va", secret_keys=[KEY_A])
    assert locker.delete_secret(sqlite_session, tenant.id, "a") is True
    assert locker.delete_secret(sqlite_session, tenant.id, "a") is False
    assert locker.list_secret_keys(sqlite_session, tenant.id) == []


def test_a_malformed_key_is_refused_without_echoing_it(
    sqlite_session: Session, tenant: Tenant
) -> None:
    with pytest.raises(PermanentError, match="malformed key") as caught:
        locker.set_secret(sqlite_session, tenant.id, "a", "v", secret_keys=["not-a-key-XYZ"])
    assert "not-a-key-XYZ" not in str(caught.value)
