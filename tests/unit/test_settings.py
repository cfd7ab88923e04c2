"""Settings: defaults that work on localhost, and one clear error per bad value."""

from __future__ import annotations

import dataclasses

import pytest

from settings import (
    DEFAULT_BROKER_URL,
    DEFAULT_DATABASE_URL,
    Settings,
    SettingsError,
    load_settings,
)
from tests.support import REPO


def test_defaults_point_at_the_local_servers() -> None:
    settings = load_settings({})
    assert settings.broker_url == DEFAULT_BROKER_URL
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.tenant_queue(7) == "tenant.7"
    assert settings.system_queue == "taskyard.system"
    assert not settings.uses_stub_broker


def test_values_are_parsed_and_typed() -> None:
    settings = load_settings(
        {
            "BROKER_URL": "stub://",
            "TASKYARD_TENANTS": " 7, 9 ",
            "TASKYARD_QUEUE_PREFIX": "ci1.",
            "TASKYARD_MAX_ATTEMPTS": "5",
            "TASKYARD_LOG_FORMAT": "JSON",
            "TASKYARD_HTTP_READ_TIMEOUT": "2.5",
            "TASKYARD_DB_PREPARED_STATEMENTS": "false",
        }
    )
    assert settings.uses_stub_broker
    assert settings.tenants == (7, 9)
    assert settings.tenant_queue(9) == "ci1.tenant.9"
    assert settings.max_attempts == 5
    assert settings.log_format == "json"
    assert settings.http_read_timeout == 2.5
    assert settings.db_prepared_statements is False
    assert load_settings({}).db_prepared_statements is True


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BROKER_URL", "redis://localhost", "an AMQP URL"),
        ("DATABASE_URL", "mysql://root@localhost/x", "a database URL"),
        ("TASKYARD_TENANTS", "7,x", "comma-separated tenant ids"),
        ("TASKYARD_TENANTS", "0", "comma-separated tenant ids"),
        ("TASKYARD_MAX_ATTEMPTS", "0", "a whole number >= 1"),
        ("TASKYARD_MAX_ATTEMPTS", "three", "a whole number >= 1"),
        ("TASKYARD_HTTP_READ_TIMEOUT", "-1", "seconds"),
        ("TASKYARD_LOG_FORMAT", "xml", "text or json"),
        ("TASKYARD_QUEUE_PREFIX", "bad prefix", "a queue-name prefix"),
        ("TASKYARD_METRICS_PORT", "http", "a TCP port number"),
        ("TASKYARD_DB_PREPARED_STATEMENTS", "sometimes", "true or false"),
        ("TASKYARD_PREFETCH", "-1", "a whole number of messages"),
        ("TASKYARD_TENANT_WEIGHTS", "12", "tenant=weight pairs"),
        ("TASKYARD_TENANT_WEIGHTS", "12=0", "tenant=weight pairs"),
        ("TASKYARD_TENANT_WEIGHTS", "12=nan", "tenant=weight pairs"),
        ("TASKYARD_TENANT_WEIGHTS", "0=2", "tenant=weight pairs"),
        ("TASKYARD_TENANT_WEIGHTS", "12=2,12=3", "given twice"),
        ("TASKYARD_WEB_PORT", "70000", "a TCP port number"),
        ("TASKYARD_WEB_SESSION_MINUTES", "0", "minutes >= 1"),
        ("TASKYARD_WEB_COOKIE_SECURE", "maybe", "true or false"),
        ("TASKYARD_WEB_PROXY_USER_HEADER", "X-User: admin", "an HTTP header name"),
        ("TASKYARD_RABBITMQ_API_URL", "amqp://guest:pw@127.0.0.1", "an http:// or https:// URL"),
        ("TASKYARD_RABBITMQ_API_URL", "http://", "an http:// or https:// URL"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_was_expected(
    name: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError, match=name) as raised:
        load_settings({name: value})
    assert expected in str(raised.value)


def test_the_web_consoles_settings_default_to_localhost_and_keep_the_key_out_of_repr() -> None:
    settings = load_settings({"TASKYARD_WEB_SECRET_KEY": "k" * 40})
    assert (settings.web_host, settings.web_port) == ("127.0.0.1", 9292)
    assert settings.web_proxy_user_header == "" and not settings.web_cookie_secure
    assert "k" * 40 not in repr(settings)
    proxied = load_settings({"TASKYARD_WEB_PROXY_USER_HEADER": "X-Forwarded-User"})
    assert proxied.web_proxy_user_header == "X-Forwarded-User"


def test_tenant_weights_and_the_prefetch_bound_are_parsed() -> None:
    settings = load_settings(
        {"TASKYARD_TENANT_WEIGHTS": " 40=0.5, 12=2 ,", "TASKYARD_PREFETCH": "32"}
    )
    assert settings.tenant_weights == ((12, 2.0), (40, 0.5))
    assert settings.prefetch == 32
    assert load_settings({}).tenant_weights == () and load_settings({}).prefetch == 0


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"DATABASE_URL": "mysql://admin:hunter2@db/x"})
    assert "hunter2" not in str(raised.value)
    assert "admin:***@db" in str(raised.value)


def test_a_plain_postgresql_url_is_pinned_to_the_psycopg2_driver() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://u:pw@db:5432/taskyard"})
    assert settings.database_url == "postgresql+psycopg2://u:pw@db:5432/taskyard"
    explicit = load_settings({"DATABASE_URL": "postgresql+psycopg2://u@db/x"})
    assert explicit.database_url == "postgresql+psycopg2://u@db/x"


def test_secret_keys_are_parsed_hidden_from_repr_and_a_bad_one_is_not_echoed() -> None:
    from cryptography.fernet import Fernet

    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = load_settings({"TASKYARD_SECRET_KEYS": f" {first} , {second} "})
    assert settings.secret_keys == (first, second)
    assert first not in repr(settings)
    assert load_settings({}).secret_keys == ()
    with pytest.raises(SettingsError, match="TASKYARD_SECRET_KEYS is invalid: key number 2") as exc:
        load_settings({"TASKYARD_SECRET_KEYS": f"{first},not-a-real-key-123"})
    assert "not-a-real-key-123" not in str(exc.value)


def test_every_setting_is_in_the_settings_reference() -> None:
    table = (REPO / "docs" / "reference" / "settings.md").read_text()
    for setting in dataclasses.fields(Settings):
        name = setting.name.upper()
        variable = name if name in ("BROKER_URL", "DATABASE_URL") else f"TASKYARD_{name}"
        assert f"`{variable}`" in table, f"{variable} is not in docs/reference/settings.md"
