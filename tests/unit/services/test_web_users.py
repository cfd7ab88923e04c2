"""The console's operators: checked before stored, passwords hashed, sign-in as slow for all."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from db.models import Tenant
from services.errors import NotFound, ValidationFailed
from services.tenants import create_tenant
from services.web_users import (
    add_web_user,
    authenticate,
    remove_web_user,
    session_stamp,
    web_user_info,
)

PASSWORD = "a long enough password"


@pytest.mark.parametrize(
    "name, password, role, tenants, words",
    [
        ("<b>x", PASSWORD, "admin", None, "must be 1 to 100 letters"),
        ("", PASSWORD, "admin", None, "must be 1 to 100 letters"),
        ("ops", "short", "admin", None, "8 to 1000 characters"),
        ("ops", "x" * 1001, "admin", None, "8 to 1000 characters"),
        ("ops", PASSWORD, "root", None, "role must be one of admin, viewer"),
        ("ops", PASSWORD, "viewer", [0], "tenant ids are positive integers"),
        ("ops", PASSWORD, "viewer", [True], "tenant ids are positive integers"),
        ("ops", PASSWORD, "viewer", [424242], "no tenant 424242"),
    ],
)
def test_a_bad_user_is_refused_naming_the_field(
    sqlite_session: Session,
    name: str,
    password: str,
    role: str,
    tenants: list[int] | None,
    words: str,
) -> None:
    with pytest.raises(ValidationFailed, match=words):
        add_web_user(sqlite_session, name, password=password, role=role, tenant_ids=tenants)


def test_the_password_is_kept_only_as_an_argon2id_hash_and_checked(
    sqlite_session: Session, tenant: Tenant
) -> None:
    other = create_tenant(sqlite_session, "other").id
    scope = [other, tenant.id, other]
    user = add_web_user(sqlite_session, "ops", password=PASSWORD, role="viewer", tenant_ids=scope)
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    assert web_user_info(user)["tenant_ids"] == sorted({tenant.id, other})
    assert authenticate(sqlite_session, "ops", PASSWORD) is user
    assert authenticate(sqlite_session, "ops", PASSWORD + "x") is None
    assert authenticate(sqlite_session, "nobody", PASSWORD) is None
    assert authenticate(sqlite_session, "<b>", PASSWORD) is None
    with pytest.raises(ValidationFailed, match="exists already"):
        add_web_user(sqlite_session, "ops", password=PASSWORD, role="admin")


def test_a_new_password_changes_the_session_stamp(sqlite_session: Session) -> None:
    user = add_web_user(sqlite_session, "ops", password=PASSWORD, role="admin")
    before = session_stamp(user)
    remove_web_user(sqlite_session, "ops")
    again = add_web_user(sqlite_session, "ops", password=PASSWORD, role="admin")
    assert session_stamp(again) != before
    with pytest.raises(NotFound):
        remove_web_user(sqlite_session, "nobody")
