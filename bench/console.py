"""The web console's pages on a filled `jobs` table: the server's time, and the browser's paint.

A scenario of `python -m bench` (`--only console`; `--console-rows N` sets the
table's size, 10 million included), and on its own: `python -m bench.console
--database-url URL --rows N` on a migrated database of your own.

Two sets of figures, each a ratio to a baseline measured in the same run:

- Server: every page's GET through Flask's test client (rendering included,
  the network and the browser not), each timed beside a GET of a static
  asset (`/static/console.css`) in the same loop: the median of a few of each.
- Browser: headless Chromium (Debian's, through its chromedriver: nothing is
  downloaded) loads the main pages from the console served by waitress, as
  `taskyard web` serves it, and reads the Navigation and Paint Timing APIs:
  first contentful paint and DOMContentLoaded, from the navigation's start.
  Its baseline is the sign-in form, loaded the same way by a browser not signed
  in: the same layout, style sheet and scripts, and no query.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import sessionmaker

from bench.env import BenchError
from bench.report import Figure
from bench.store import fill
from db.models import Job, Schedule
from services.web_users import add_web_user
from settings import load_settings
from web import queue_readings
from web.app import create_app

SCENARIO = "12. Web console (a page's time over its baseline's, same run)"
# GETs per page and figure in one run (their median is the run's value).
TIMED_RUNS = 5
# Browser loads per page in one run.
BROWSER_LOADS = 3
PASSWORD = "bench password"
STATIC = "/static/console.css"
SIGN_IN = "/sign-in"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# The pages the browser loads (the server's figures cover every page).
BROWSER_PAGES = ("overview", "jobs", "jobs, one tenant", "one job", "dead letters", "schedules",
                 "tenants", "workers")  # fmt: skip
# Navigation and Paint Timing, from the navigation's start, in milliseconds.
_TIMING = """
const nav = performance.getEntriesByType('navigation')[0];
const paints = performance.getEntriesByType('paint');
const fcp = paints.find(e => e.name === 'first-contentful-paint')
         || paints.find(e => e.name === 'first-paint');
return [fcp ? fcp.startTime : null, nav ? nav.domContentLoadedEventEnd - nav.startTime : null];
"""


class ConsoleBenchError(BenchError):
    """The console could not be measured (a page failed, no browser)."""


def _pages(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        tenant = conn.execute(
            text("SELECT tenant_id FROM jobs WHERE tenant_id IS NOT NULL LIMIT 1")
        ).scalar_one()
    with sessionmaker(engine)() as session:
        job = session.scalar(select(Job.message_id).order_by(Job.created_at.desc()).limit(1))
        schedule = session.scalar(select(Schedule.id).limit(1))
    pages = [
        ("overview", "/"),
        ("overview panel (every 5 s)", "/overview/panel"),
        ("overview: finished per hour (after the page)", "/overview/hours"),
        ("jobs", "/jobs"),
        ("jobs, one tenant", f"/jobs?tenant={tenant}"),
        ("jobs, dead", "/jobs?status=dead"),
        ("jobs, one tenant, a closed range", f"/jobs?tenant={tenant}&since=7d&until=1d"),
        ("jobs, running", "/jobs?status=running"),
        ("one job", f"/jobs/{job}"),
        ("dead letters", "/dead-letters"),
        ("schedules", "/schedules"),
        ("tenants", "/tenants"),
        ("tenants: their counts and queues (after the page)", "/tenants/figures"),
        ("overview: queues holding messages (after the page)", "/overview/queues"),
        ("workers", "/workers"),
    ]
    if schedule is not None:
        pages.append(("one schedule", f"/schedules/{schedule}"))
    return pages


def _add_admin(engine: Engine) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with sessionmaker(engine).begin() as session:
        add_web_user(session, name, password=PASSWORD, role="admin")
    return name


def _signed_in(client: FlaskClient, name: str) -> None:
    page = client.get(SIGN_IN).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if found is None:
        raise ConsoleBenchError("the sign-in form carries no CSRF token")
    data = {"name": name, "password": PASSWORD, "csrf_token": found.group(1)}
    if client.post(SIGN_IN, data=data).status_code != 302:
        raise ConsoleBenchError("the bench's operator could not sign in")


def _timed(get: Callable[[str], None], path: str) -> float:
    started = time.perf_counter()
    get(path)
    return (time.perf_counter() - started) * 1000


def server_times(
    app: Flask, admin: str, pages: list[tuple[str, str]]
) -> dict[str, tuple[float, float]]:
    """Each page's median GET (ms), with the median of the static GETs timed beside it."""
    client = app.test_client()
    _signed_in(client, admin)

    def get(path: str) -> None:
        answer = client.get(path)
        if answer.status_code != 200:
            raise ConsoleBenchError(f"GET {path} answered {answer.status_code}")

    found = {}
    # Each GET reads RabbitMQ afresh: the reading's own cost, not the console's cache of it.
    kept_for, queue_readings.MAX_AGE_SECONDS = queue_readings.MAX_AGE_SECONDS, 0.0
    try:
        for label, path in pages:
            found[label] = _page_times(get, path)
    finally:
        queue_readings.MAX_AGE_SECONDS = kept_for
    return found


def _page_times(get: Callable[[str], None], path: str) -> tuple[float, float]:
    """A page's median GET (ms), and the median of the static GETs timed beside it."""
    get(path)  # warm: the first GET of a page compiles its template
    page_ms, static_ms = [], []
    for _ in range(TIMED_RUNS):
        page_ms.append(_timed(get, path))
        static_ms.append(_timed(get, STATIC))
    return statistics.median(page_ms), statistics.median(static_ms)


@contextmanager
def served(app: Flask) -> Iterator[str]:
    """`app` served by waitress (as `taskyard web` serves it) on a free local port."""
    from waitress.server import create_server

    server: Any = create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()


@contextmanager
def _browser() -> Iterator[Any]:
    from pathlib import Path

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise ConsoleBenchError(
            f"no Chromium at {CHROMIUM} or chromedriver at {CHROMEDRIVER} "
            "(apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _load(driver: Any, url: str) -> tuple[float, float]:
    """Load `url`; its first contentful paint and DOMContentLoaded (ms from the start)."""
    driver.get(url)
    for _ in range(50):
        paint, loaded = driver.execute_script(_TIMING)
        if paint is not None and loaded is not None and loaded > 0:
            return float(paint), float(loaded)
        time.sleep(0.02)
    raise ConsoleBenchError(f"no paint or DOMContentLoaded timing for {url}")


def browser_times(
    app: Flask, admin: str, pages: list[tuple[str, str]]
) -> dict[str, tuple[float, float, float, float]]:
    """Per page: median paint and DOMContentLoaded (ms), and the sign-in form's, loaded beside."""
    found = {}
    with served(app) as base, _browser() as signed, _browser() as anonymous:
        signed.get(base + SIGN_IN)
        signed.find_element("name", "name").send_keys(admin)
        signed.find_element("name", "password").send_keys(PASSWORD)
        signed.find_element("css selector", "form button[type=submit]").click()
        # The click returns before the form's POST and its redirect are done: wait for them.
        deadline = time.monotonic() + SIGN_IN_SECONDS
        while SIGN_IN in signed.current_url and time.monotonic() < deadline:
            time.sleep(0.05)
        if SIGN_IN in signed.current_url:
            raise ConsoleBenchError("the browser could not sign in")
        for label, path in pages:
            if label not in BROWSER_PAGES:
                continue
            _load(signed, base + path)  # warm: the template, the browser's cache
            _load(anonymous, base + SIGN_IN)
            page = [_load(signed, base + path) for _ in range(BROWSER_LOADS)]
            form = [_load(anonymous, base + SIGN_IN) for _ in range(BROWSER_LOADS)]
            found[label] = (
                statistics.median(p for p, _ in page),
                statistics.median(d for _, d in page),
                statistics.median(p for p, _ in form),
                statistics.median(d for _, d in form),
            )
    return found


# How long the browser's sign-in (the form's POST, then its redirect) may take.
SIGN_IN_SECONDS = 30.0
# Each page's first paint, at most (the web console issue's target).
FIRST_PAINT_MS = 200.0


def run(database_url: str, *, rows: int, runs: int) -> list[Figure]:
    """The console's figures on a `jobs` table of `rows` records, `runs` runs each."""
    engine = create_engine(database_url)
    try:
        fill(engine, rows)
        admin = _add_admin(engine)
        app = create_app(load_settings({"DATABASE_URL": database_url}), engine=engine)
        pages = _pages(engine)
        table = f"{rows:,} job records"
        figures: dict[tuple[str, str], Figure] = {}

        def add(
            what: str,
            system: str,
            value: float,
            baseline: str | None = None,
            at_most: float | None = None,
        ) -> None:
            key = (what, system)
            if key not in figures:
                figures[key] = Figure(SCENARIO, what, system, "ms", baseline=baseline,
                                      at_most=at_most, higher_is_better=False,
                                      note=table)  # fmt: skip
            figures[key].values.append(value)

        for _ in range(runs):
            for label, (page, static) in server_times(app, admin, pages).items():
                what = f"server: {label}"
                add(what, "taskyard", page, baseline="a static file's GET")
                add(what, "a static file's GET", static)
            for label, (paint, loaded, form_paint, form_loaded) in browser_times(
                app, admin, pages
            ).items():
                for kind, value, base in (("first paint", paint, form_paint),
                                          ("DOMContentLoaded", loaded, form_loaded)):  # fmt: skip
                    # The bound is on a page's first paint.
                    bound = FIRST_PAINT_MS if kind == "first paint" else None
                    add(f"{kind}: {label}", "taskyard", value, "the sign-in form", bound)
                    add(f"{kind}: {label}", "the sign-in form", base)
        return list(figures.values())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Print each figure's median, beside its baseline's."""
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--database-url", required=True, help="a migrated Taskyard database")
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args(argv)
    for figure in run(args.database_url, rows=args.rows, runs=1):
        print(f"{figure.what} [{figure.system}]: {figure.median:,.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
