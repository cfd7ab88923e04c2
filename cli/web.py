"""`taskyard web`: serve the operator's web console; `taskyard web user ...`: its operators."""

from __future__ import annotations

import sys

import click
from sqlalchemy.orm import Session

from cli.common import ID, CommandFailed, State, json_option, main, run, transaction_command
from cli.render import emit, records_printer, value_printer
from db.migrate import check_schema
from db.models import WEB_ROLES
from db.session import make_engine
from services.errors import ValidationFailed
from services.web_users import (
    WebUserInfo,
    add_web_user,
    list_web_users,
    remove_web_user,
    web_user_info,
)


@main.group("web", invoke_without_command=True)
@click.pass_context
def web(ctx: click.Context) -> None:
    """Serve the web console on TASKYARD_WEB_HOST:TASKYARD_WEB_PORT (127.0.0.1:9292).

    Operators sign in with a name and password: add the first with
    `taskyard web user add NAME --role admin`.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = ctx.ensure_object(State).load_settings()
    engine = make_engine(settings)
    check_schema(engine)
    from web.app import create_app
    from web.serve import serve_console

    with engine.begin() as connection:
        users = len(list_web_users(Session(bind=connection)))
    if users == 0:
        click.echo(
            "no web user yet: nobody can sign in until one is added with "
            "`taskyard web user add NAME --role admin`",
            err=True,
        )
    serve_console(create_app(settings, engine=engine), settings)


@web.group("user")
def web_user() -> None:
    """Add, list and remove the operators who may sign in to the web console."""


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@web_user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(list(WEB_ROLES)), required=True, help="admin acts.")
@click.option(
    "--tenant",
    "tenant_ids",
    type=ID,
    multiple=True,
    help="Limit the user to this tenant (repeat for more); all tenants when absent.",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
@json_option
@click.pass_context
def web_user_add(
    ctx: click.Context,
    name: str,
    role: str,
    tenant_ids: tuple[int, ...],
    password_stdin: bool,
    as_json: bool,
) -> None:
    """Add operator NAME (the password is asked twice, never shown); prints the user's id."""
    password = _read_password(password_stdin)

    def add(session: Session) -> WebUserInfo:
        user = add_web_user(
            session, name, password=password, role=role, tenant_ids=list(tenant_ids) or None
        )
        return web_user_info(user)

    try:
        info = run(ctx, add)
    except ValidationFailed as exc:
        raise CommandFailed(f"web user {name!r} not added: {exc}") from exc
    emit(info, as_json, value_printer("id"))


@transaction_command(
    web_user, "list", records_printer("web users", ("id", "name", "role", "tenant_ids"))
)
def web_user_list(session: Session) -> list[WebUserInfo]:
    """List the console's operators (never their password hashes)."""
    return [web_user_info(u) for u in list_web_users(session)]


@transaction_command(web_user, "remove", lambda info: click.echo(f"removed web user {info}"))
@click.argument("name")
def web_user_remove(session: Session, name: str) -> str:
    """Remove operator NAME; their open sessions end at their next request."""
    remove_web_user(session, name)
    return name
