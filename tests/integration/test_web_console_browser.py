"""The web console in a real browser (Debian's headless Chromium, driven by Selenium).

An operator signs in, finds a dead letter by its error and requeues it, and the
run's worker runs the job to success; pauses a schedule, which the next tick
skips; watches a running job on the workers page; a viewer is refused what only
an admin may do. The console is served from a thread of the test process on the
run's database and broker.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

import tests.integration.pipeline_actors as pipeline_actors
from db.models import Job
from services.dead_letters import record_dead_letter
from services.schedule_slots import claim_due_slots
from services.schedules import create_schedule
from settings import Settings
from tests.integration.web_support import Login, add_job, add_operator, unconsumed_tenant_queue
from tests.support import WorkerProcess
from web.app import create_app

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# What a page may take to show what the test waits for (a worker's beat is 2 s).
WAIT_SECONDS = 20


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium through Debian's chromedriver (its path given: nothing downloads)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = f"no Chromium at {CHROMIUM} or chromedriver at {CHROMEDRIVER}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}: CI installs them (apt-get install chromium chromium-driver)")
        pytest.skip(f"{message}: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def console_url(settings: Settings, engine: Engine) -> Iterator[str]:
    """The console served on a free port of 127.0.0.1 for the module's tests."""
    server = make_server("127.0.0.1", 0, create_app(settings, engine=engine), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def admin(engine: Engine) -> Login:
    """The module's admin."""
    return add_operator(engine, "admin")


@pytest.fixture(scope="module")
def viewer(engine: Engine) -> Login:
    """The module's viewer."""
    return add_operator(engine, "viewer")


# Who the module's browser is signed in as: signing in again only when it changes
# (each sign-in checks an Argon2 hash, on purpose slow).
_signed_in: dict[str, str] = {}


def sign_in(browser: WebDriver, url: str, login: Login) -> None:
    """Sign in through the form, as an operator does (unless signed in as `login` already)."""
    if _signed_in.get(url) == login.name:
        return
    browser.delete_all_cookies()
    browser.get(f"{url}/sign-in")
    browser.find_element(By.NAME, "name").send_keys(login.name)
    browser.find_element(By.NAME, "password").send_keys(login.password)
    browser.find_element(By.CSS_SELECTOR, "form.stacked button[type=submit]").click()
    wait_until(browser, lambda b: "Overview" in b.title)
    _signed_in[url] = login.name


def wait_until(browser: WebDriver, check: Callable[[WebDriver], Any]) -> Any:
    """Wait for `check` to hold in the browser; an element that went stale because the page
    was replaced between finding and reading it (a form's POST, then its redirect) is
    looked for again."""
    return WebDriverWait(
        browser,
        WAIT_SECONDS,
        poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(check)


def test_an_admin_finds_a_dead_letter_by_its_error_requeues_it_and_the_job_succeeds(
    browser: WebDriver,
    admin: Login,
    console_url: str,
    engine: Engine,
    settings: Settings,
    make_tenant: Callable[[str], int],
    worker: WorkerProcess,
) -> None:
    tenant_id = make_tenant("browser")
    marker = f"upstream-{uuid.uuid4().hex[:8]} refused"
    queue = settings.tenant_queue(tenant_id)
    kwargs = {"tenant_id": tenant_id, "label": f"requeued-{uuid.uuid4().hex[:8]}"}
    with sessionmaker(engine).begin() as s:
        message_id = add_job(s, tenant_id, status="dead", args=kwargs, actor="test_pipe_count")
        s.get(Job, message_id).queue = queue  # type: ignore[union-attr]
        message = {
            "queue_name": queue,
            "actor_name": "test_pipe_count",
            "args": [],
            "kwargs": kwargs,
            "options": {},
            "message_id": message_id,
            "message_timestamp": int(time.time() * 1000),
        }
        record_dead_letter(
            s,
            message_id=message_id,
            queue=queue,
            reason="attempts_spent",
            error=f"ConnectionError: {marker}",
            traceback=None,
            attempts=3,
            actor="test_pipe_count",
            tenant_id=tenant_id,
            message=message,
        )
    sign_in(browser, console_url, admin)
    browser.get(f"{console_url}/dead-letters")
    browser.find_element(By.NAME, "error").send_keys(marker)
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    found = "tbody tr td a code"

    def filtered(b: WebDriver) -> bool:
        # Read inside the wait: the unfiltered page's rows go stale once the filtered one loads.
        return [row.text for row in b.find_elements(By.CSS_SELECTOR, found)] == [message_id]

    wait_until(browser, filtered)
    wait_until(browser, lambda b: b.find_element(By.CSS_SELECTOR, found).click() or True)
    browser.find_element(By.XPATH, "//button[text()='Requeue']").click()
    wait_until(browser, lambda b: f"requeued {message_id}" in b.page_source)
    browser.get(f"{console_url}/jobs/{message_id}")

    def succeeded(b: WebDriver) -> bool:
        b.refresh()
        return bool(b.find_elements(By.CSS_SELECTOR, ".fields .status-succeeded"))

    wait_until(browser, succeeded)


def test_an_admin_pauses_a_schedule_and_the_next_tick_skips_it(
    browser: WebDriver,
    admin: Login,
    console_url: str,
    engine: Engine,
    make_tenant: Callable[[str], int],
) -> None:
    tenant_id = make_tenant("browser")
    with sessionmaker(engine, expire_on_commit=False).begin() as s:
        schedule = create_schedule(
            s,
            tenant_id,
            actor="test_pipe_count",
            args={"label": "tick"},
            cron="*/5 * * * *",
            actors={"test_pipe_count": None},
            now=dt.datetime.now(dt.UTC),
        )
    sign_in(browser, console_url, admin)
    browser.get(f"{console_url}/schedules?tenant={tenant_id}")
    row = f"#schedule-{schedule.id}"
    browser.find_element(By.CSS_SELECTOR, f"{row} button").click()
    wait_until(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"{row} .state").text == "paused")
    # The tick's own claim, at the slot the schedule was due, rolled back after.
    assert schedule.next_slot_at is not None
    due = schedule.next_slot_at + dt.timedelta(minutes=1)
    with engine.connect() as connection, connection.begin() as transaction:
        runs = claim_due_slots(Session(bind=connection), now=due, actors={"test_pipe_count"})
        transaction.rollback()
    assert schedule.id not in {run["schedule_id"] for run in runs}


def test_a_running_job_shows_on_the_workers_page(
    browser: WebDriver,
    viewer: Login,
    console_url: str,
    make_tenant: Callable[[str], int],
    worker: WorkerProcess,
) -> None:
    tenant_id = make_tenant("browser")
    sign_in(browser, console_url, viewer)
    message = pipeline_actors.result_value.send(tenant_id=tenant_id, value=1, sleep_ms=6000)
    browser.get(f"{console_url}/workers")
    # No reload: the page's own refresh (htmx, every 2 s) brings the job in.
    wait_until(browser, lambda b: message.message_id in b.page_source)


def test_a_viewer_reads_but_is_refused_an_admins_action(
    browser: WebDriver, viewer: Login, console_url: str, make_tenant: Callable[[str], int]
) -> None:
    tenant_id = make_tenant("browser")
    sign_in(browser, console_url, viewer)
    # The page that starts with it: other tests' tenants share the database.
    browser.get(f"{console_url}/tenants?after={tenant_id - 1}")
    assert browser.find_element(By.CSS_SELECTOR, f"#tenant-{tenant_id} .state").text == "active"
    assert not browser.find_elements(By.XPATH, "//button[text()='Disable']")
    browser.get(f"{console_url}/tenants/{tenant_id}/delete")
    assert "403" in browser.title and "only an admin" in browser.page_source


def test_the_tenants_page_fills_in_its_counts_and_queues_after_it_is_shown(
    browser: WebDriver, viewer: Login, console_url: str, engine: Engine, settings: Settings
) -> None:
    # (a tenant being deleted: no worker of the run consumes its queue, so the count stays)
    with unconsumed_tenant_queue(engine, settings, 2) as tenant_id:
        sign_in(browser, console_url, viewer)
        # The page that starts with it: other tests' tenants share the database.
        browser.get(f"{console_url}/tenants?after={tenant_id - 1}&limit=2")
        # Its row's queue cell, swapped in by htmx where the page's own cell was.
        cell = f"#tenant-{tenant_id} td.queue"
        wait_until(browser, lambda b: b.find_element(By.CSS_SELECTOR, cell).text == "2 / -")
        # (its counts come with it: no record waits or finished)
        for kind in ("waiting", "finished"):
            found = browser.find_element(By.CSS_SELECTOR, f"#tenant-{tenant_id} td.{kind}")
            assert found.text == "0", kind
        assert len(browser.find_elements(By.CSS_SELECTOR, f"#tenant-{tenant_id} td")) == len(
            browser.find_elements(By.CSS_SELECTOR, "thead th")
        )
        # And the overview's two sections read after the page come in the same way
        browser.get(f"{console_url}/")
        wait_until(
            browser,
            lambda b: b.find_element(By.CSS_SELECTOR, "#overview-queues h2").text.startswith(
                "Queues holding messages now (RabbitMQ"
            ),
        )
        wait_until(
            browser, lambda b: "Finished per hour" in b.find_element(By.ID, "overview-hours").text
        )
