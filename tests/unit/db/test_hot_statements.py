"""How a hot statement becomes a PostgreSQL prepared statement (the SQL only; no server)."""

from __future__ import annotations

from sqlalchemy import Integer, String, bindparam, column, literal_column, select, table
from sqlalchemy.dialects.postgresql import psycopg2

from db.hot import HotStatement

DIALECT = psycopg2.dialect()
ITEMS = table("items", column("id", Integer), column("name", String(40)))


def test_each_parameter_is_numbered_once_and_declared_without_its_length() -> None:
    statement = HotStatement(
        lambda dialect: select(ITEMS.c.id).where(
            ITEMS.c.name == bindparam("name", type_=String(40)),
            ITEMS.c.id > bindparam("low", type_=Integer),
            ITEMS.c.name.like(literal_column("'50%'")),
            ITEMS.c.name != bindparam("name", type_=String(40)),
        )
    )

    compiled = statement._compiled_for(DIALECT)

    assert compiled.prepare is not None
    head, body = compiled.prepare.split(" AS ", 1)
    assert head == f"PREPARE {statement.name} (VARCHAR, INTEGER)"
    assert "items.name = $1" in body and "items.id > $2" in body and "items.name != $1" in body
    # PREPARE runs without parameters: the escaped percent sign becomes a plain one.
    assert "'50%'" in body and "%%" not in body
    assert compiled.execute == f"EXECUTE {statement.name}(%(name)s, %(low)s)"


def test_a_parameter_of_no_known_type_leaves_the_statement_unprepared() -> None:
    statement = HotStatement(
        lambda dialect: select(ITEMS.c.id).where(ITEMS.c.name == bindparam("anything"))
    )
    # Compared with a typed column, the parameter takes the column's type: give it none.
    untyped = HotStatement(lambda dialect: select(bindparam("anything")))

    assert statement._compiled_for(DIALECT).prepare is not None
    assert untyped._compiled_for(DIALECT).prepare is None


def test_every_hot_statement_has_a_name_of_its_own() -> None:
    names = {HotStatement(lambda dialect: select(ITEMS.c.id)).name for _ in range(3)}
    assert len(names) == 3


def test_a_statement_without_parameters_is_executed_by_its_name_alone() -> None:
    statement = HotStatement(lambda dialect: select(ITEMS.c.id))

    compiled = statement._compiled_for(DIALECT)

    # PostgreSQL refuses an empty list of types: `PREPARE name () AS ...` is a syntax error.
    assert compiled.prepare == f"PREPARE {statement.name} AS {compiled.sql}"
    assert compiled.execute == f"EXECUTE {statement.name}"
