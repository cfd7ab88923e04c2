"""The listing statements' text: their parameters as psycopg2 takes them, and their columns."""

from __future__ import annotations

import datetime as dt

from db.connect import libpq_url
from db.models import Job
from services.listing_sql import JOB_COLUMNS, Statement, jobs_page, jobs_with_ids, like_contains
from services.pagination import Position


def test_named_parameters_become_psycopg2_ones_and_percent_signs_are_doubled() -> None:
    statement = Statement(
        "SELECT a::text FROM t WHERE b = :b AND c LIKE '5%' AND d IN :ids", {}, ("a",)
    )
    assert statement.pyformat() == (
        "SELECT a::text FROM t WHERE b = %(b)s AND c LIKE '5%%' AND d IN %(ids)s"
    )


def test_a_list_parameter_is_a_tuple_for_the_driver() -> None:
    statement = jobs_with_ids(["m1", "m2"])
    assert statement.driver_params() == {"ids": ("m1", "m2")}
    assert "message_id IN :ids" in statement.sql


def test_the_like_pattern_escapes_its_own_characters() -> None:
    assert like_contains("100%_a/b") == "%100/%/_a//b%"


def test_every_filter_is_a_parameter_never_text_of_the_statement() -> None:
    # A filter's value comes from the command line: it must reach the server as a value.
    crafted = "x'; DROP TABLE jobs; --"
    at = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    statement = jobs_page(
        "postgresql", tenant_id=1, status=crafted, actor=crafted, since=at, until=at,
        error_contains=crafted, exclude_queue=crafted, after=Position(at, crafted), limit=5,
    )  # fmt: skip
    assert crafted not in statement.sql
    assert statement.times == {"since", "until", "after_at"}
    assert {"status", "actor", "exclude_queue", "after_key"} <= statement.params.keys()


def test_the_statements_select_every_column_of_the_record() -> None:
    assert set(JOB_COLUMNS) == set(Job.__table__.columns.keys())


def test_a_database_url_becomes_libpq_s_and_sqlite_has_none() -> None:
    url = "postgresql+psycopg2://u:p%40ss@db.internal:6432/taskyard?sslmode=require"
    assert libpq_url(url) == "postgresql://u:p%40ss@db.internal:6432/taskyard?sslmode=require"
    assert libpq_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert libpq_url("sqlite:///demo.db") is None
