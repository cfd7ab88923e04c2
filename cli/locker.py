"""`taskyard locker ...`: a tenant's encrypted secrets; values never travel through argv."""

from __future__ import annotations

import sys

import click
from sqlalchemy.orm import Session

from cli.common import (
    CommandFailed,
    State,
    TenantWasFirst,
    json_option,
    main,
    run,
    tenant_option,
    transaction_command,
)
from cli.render import emit, value_printer
from services.locker import delete_secret, get_secret, list_secret_keys, set_secret
from services.tenants import get_tenant


@main.group()
def locker() -> None:
    """Set, get, list and delete a tenant's secrets (TASKYARD_SECRET_KEYS encrypts them)."""


def _read_value(key: str) -> str:
    # Never an argument: argv is visible to every user of the machine (ps) and in shell history.
    if sys.stdin.isatty():
        value: str = click.prompt(f"value of {key}", hide_input=True, confirmation_prompt=True)
        return value
    value = sys.stdin.read()
    # `echo token | taskyard locker set ...` adds a newline that is not part of the secret.
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise CommandFailed(
            f"locker entry {key!r}: no value on stdin; pipe it in or use a terminal"
        )
    return value


@locker.command("set", cls=TenantWasFirst)
@tenant_option("The tenant whose secret it is.", required=True)
@click.argument("key")
@json_option
@click.pass_context
def locker_set(ctx: click.Context, tenant_id: int, key: str, as_json: bool) -> None:
    """Store secret KEY of a tenant, read from stdin or a hidden prompt."""
    secret_keys = ctx.ensure_object(State).load_settings().secret_keys
    value = _read_value(key)

    def store(session: Session) -> None:
        get_tenant(session, tenant_id)
        set_secret(session, tenant_id, key, value, secret_keys=secret_keys)

    run(ctx, store)
    info = {"tenant_id": tenant_id, "key": key, "stored": True}
    emit(info, as_json, lambda i: click.echo(f"stored {key} for tenant {tenant_id}"))


@locker.command("get", cls=TenantWasFirst)
@tenant_option("The tenant whose secret it is.", required=True)
@click.argument("key")
@click.option("--reveal", is_flag=True, help="Print the value itself (otherwise only that it is).")
@json_option
@click.pass_context
def locker_get(ctx: click.Context, tenant_id: int, key: str, reveal: bool, as_json: bool) -> None:
    """Check that secret KEY of a tenant decrypts; --reveal prints it."""
    secret_keys = ctx.ensure_object(State).load_settings().secret_keys
    secret = run(ctx, lambda s: get_secret(s, tenant_id, key, secret_keys=secret_keys))
    shown = secret.reveal() if reveal else "********"
    info = {"tenant_id": tenant_id, "key": key, "value": shown}
    emit(info, as_json, value_printer("value"))


def _print_names(names: list[str]) -> None:
    if names:
        click.echo("\n".join(names))


@transaction_command(locker, "list", _print_names, cls=TenantWasFirst)
@tenant_option("The tenant whose secrets to name.", required=True)
def locker_list(session: Session, tenant_id: int) -> list[str]:
    """The names (never the values) of a tenant's secrets."""
    get_tenant(session, tenant_id)
    return list_secret_keys(session, tenant_id)


@locker.command("delete", cls=TenantWasFirst)
@tenant_option("The tenant whose secret it is.", required=True)
@click.argument("key")
@json_option
@click.pass_context
def locker_delete(ctx: click.Context, tenant_id: int, key: str, as_json: bool) -> None:
    """Delete secret KEY of a tenant."""
    if not run(ctx, lambda s: delete_secret(s, tenant_id, key)):
        raise CommandFailed(
            f"tenant {tenant_id} has no locker entry {key!r}: "
            f"see `taskyard locker list --tenant {tenant_id}`"
        )
    info = {"tenant_id": tenant_id, "key": key, "deleted": True}
    emit(info, as_json, lambda i: click.echo(f"deleted {key} of tenant {tenant_id}"))
