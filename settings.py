"""Taskyard's settings: the environment, read once into one typed, frozen object."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from services.redaction import hide_password

T = TypeVar("T")

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/taskyard"


# The kinds of queue Taskyard can declare (TASKYARD_QUEUE_TYPE); the first is the default.
QUEUE_TYPES = ("classic", "quorum")

# Every tenant queue's name starts with the prefix, then this.
TENANT_QUEUE_HEAD = "tenant."


def tenant_queue_name(queue_prefix: str, tenant_id: int) -> str:
    """The queue that carries one tenant's messages: the one rule of its name."""
    return f"{queue_prefix}{TENANT_QUEUE_HEAD}{tenant_id}"


def tenant_of_queue_name(queue_prefix: str, queue_name: str) -> int | None:
    """The tenant whose queue (or delay queue) this is; None for any other queue."""
    head = f"{queue_prefix}{TENANT_QUEUE_HEAD}"
    # As Dramatiq's q_name: one .DQ or .XQ suffix names the same queue.
    rest = queue_name[:-3] if queue_name.endswith((".DQ", ".XQ")) else queue_name
    digits = rest[len(head) :]
    # ASCII only: str.isdigit() and int() also take the digits of other scripts.
    if not rest.startswith(head) or not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits)


class SettingsError(ValueError):
    """A variable of the environment has a value Taskyard cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything Taskyard reads from the environment; build it with `load_settings()`."""

    # RabbitMQ's URL; `stub://` selects Dramatiq's in-process broker (the demo, tests).
    broker_url: str = DEFAULT_BROKER_URL
    # PostgreSQL's URL (SQLite only for the demo and the unit tests).
    database_url: str = DEFAULT_DATABASE_URL
    # Prepended to every queue name, so that two test runs (or two deployments
    # sharing one RabbitMQ vhost) never consume each other's messages.
    queue_prefix: str = ""
    # The kind of queue Taskyard declares in RabbitMQ: `classic` (one node keeps it) or
    # `quorum` (replicated on a cluster; see README, "Running on a cluster").  A queue
    # keeps its kind: changing it for existing queues is `taskyard migrate-queues`.
    queue_type: str = QUEUE_TYPES[0]
    # The host name a worker reports (`taskyard workers`); empty: the machine's own.
    hostname: str = ""
    # Tenants this worker serves; empty means every active tenant.
    tenants: tuple[int, ...] = ()
    # How often a worker looks for new tenants to serve (the promise is 60 s).
    # Within a second: a new tenant's first job starts about a second after its send.
    tenant_refresh_seconds: float = 1.0
    # How often a worker writes its heartbeat row (`taskyard workers`, `taskyard health`),
    # which also says what each of its threads runs: a job shows as running (`taskyard
    # jobs`) at most this long after it started. One statement per beat, none per job.
    heartbeat_seconds: float = 2.0
    # How long the group commit waits for more finished jobs before it writes their
    # records (0: it writes whatever finished while its last write ran, at once).
    group_commit_linger_ms: int = 0
    # Attempts a job gets in all (the first and its retries) unless its actor says otherwise.
    max_attempts: int = 3
    # Retries back off exponentially with full jitter: attempt n waits a random time up to
    # min(max_backoff_ms, min_backoff_ms * 2^(n-1)) milliseconds.
    min_backoff_ms: int = 1_000
    # The longest wait before a retry, in milliseconds.
    max_backoff_ms: int = 300_000
    # Seconds every outbound HTTP call (feeds, integrations, webhooks) may take to connect.
    http_connect_timeout: float = 3.05
    # Seconds every outbound HTTP call may wait for the server's next bytes.
    http_read_timeout: float = 20.0
    # A feed larger than this is refused rather than read into memory.
    http_max_bytes: int = 10 * 1024 * 1024
    # Outbound requests to loopback, private or link-local addresses are refused
    # unless this is set (tests serve on 127.0.0.1; see services/url_guard.py).
    http_allow_private: bool = False
    # Finished job records older than this are deleted by the daily maintenance job.
    job_retention_days: int = 30
    # The statements every job runs are prepared once per PostgreSQL connection.
    # Off for a pooler in transaction mode (PgBouncer's pool_mode=transaction), whose
    # next transaction may run on a server connection that never prepared them.
    db_prepared_statements: bool = True
    # A longer delay (a send's or a retry's) waits in the outbox table, not in a
    # worker's memory, where RabbitMQ's consumer_timeout (30 min) would redeliver it.
    broker_delay_max_seconds: float = 60.0
    # The log lines' format (text or json) of the worker processes, the scheduler and
    # `taskyard --debug`.
    log_format: str = "text"
    # The level of those log lines; at warning a worker writes no line per job.
    log_level: str = "INFO"
    # The address a worker command serves /metrics and its probes on (0.0.0.0 to be scraped
    # from another host).
    metrics_host: str = "127.0.0.1"
    # Its port; when taken, the next free one of 10 is used.
    metrics_port: int = 9191
    # Where the scheduler (`periodiq schedules`) answers /healthz and /readyz; 0: nowhere.
    scheduler_probe_port: int = 9195
    # Messages a worker process holds unacknowledged across its tenant and system queues
    # (0: 8 per worker thread, as many as one busy queue needs to keep the threads busy
    # while acks wait for the group commit). When more queues are busy than this, each
    # still holds one. Delay queues are not counted (docs/guides/tenants.md, "Fairness").
    prefetch: int = 0
    # Each tenant's share of a worker's job starts while tenants wait (default 1), as
    # (tenant id, weight) pairs: a tenant of weight 2 starts twice as many jobs.
    tenant_weights: tuple[tuple[int, float], ...] = ()
    # Tenants given a label of their own in `taskyard_tenant_jobs_total` (the
    # busiest since the worker started; at most twice this many), the rest `other`.
    metrics_tenant_labels: int = 20
    # Fernet keys of the tenant locker: the first encrypts, all decrypt (rotation).
    # Kept out of repr so that printing the settings never shows them.
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    # Where `taskyard web` (the operator's console) listens; localhost unless told.
    web_host: str = "127.0.0.1"
    # The port `taskyard web` listens on.
    web_port: int = 9292
    # Signs the console's session cookies; empty: a random key per process (every
    # sign-in ends when the console restarts). Kept out of repr.
    web_secret_key: str = field(default="", repr=False)
    # A console session ends this long after its sign-in, however active.
    web_session_minutes: int = 480
    # Send the session cookie over HTTPS only (set when a TLS proxy fronts the console).
    web_cookie_secure: bool = False
    # Opt-in: a request header (e.g. X-Forwarded-User) naming the web user that an
    # authenticating reverse proxy signed in. Only safe when nothing but that proxy can
    # reach the console: anyone who can send the header is whoever it names.
    web_proxy_user_header: str = ""
    # RabbitMQ's management API (e.g. http://guest:guest@127.0.0.1:15672), read by
    # `taskyard summary` for each queue's unacknowledged messages; empty: not read
    # (AMQP tells the ready messages only). Kept out of repr (it may hold a password).
    rabbitmq_api_url: str = field(default="", repr=False)

    @property
    def system_queue(self) -> str:
        """The queue of system actors (scheduler tick, maintenance)."""
        return f"{self.queue_prefix}taskyard.system"

    def tenant_queue(self, tenant_id: int) -> str:
        """The queue that carries one tenant's messages."""
        return tenant_queue_name(self.queue_prefix, tenant_id)

    @property
    def uses_stub_broker(self) -> bool:
        """Whether the in-process broker was asked for (`BROKER_URL=stub://`)."""
        return self.broker_url.startswith("stub://")


def _parse_int(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _parse_port(raw: str) -> int:
    value = int(raw)
    # The metrics server tries the next ports too (middleware/metrics_server.py).
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _parse_positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _parse_tenants(raw: str) -> tuple[int, ...]:
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    ids = tuple(int(part) for part in parts)
    if any(tenant_id < 1 for tenant_id in ids):
        raise ValueError("tenant ids are positive integers")
    return ids


def _parse_tenant_weights(raw: str) -> tuple[tuple[int, float], ...]:
    weights: dict[int, float] = {}
    for part in (part.strip() for part in raw.split(",")):
        if not part:
            continue
        tenant, sep, weight = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} has no '='")
        tenant_id, value = int(tenant.strip()), float(weight.strip())
        if tenant_id < 1:
            raise ValueError("tenant ids are positive integers")
        if not (value > 0 and value != float("inf")):
            raise ValueError(f"tenant {tenant_id}'s weight must be a number greater than 0")
        if tenant_id in weights:
            raise ValueError(f"tenant {tenant_id} is given twice")
        weights[tenant_id] = value
    return tuple(sorted(weights.items()))


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _parse_broker_url(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if scheme not in ("amqp", "amqps", "stub"):
        raise ValueError("must start with amqp://, amqps:// or stub://")
    return raw


def _parse_database_url(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if not (scheme.startswith("postgresql") or scheme.startswith("sqlite")):
        raise ValueError("must be a postgresql:// (or, for the demo, sqlite://) URL")
    if scheme == "postgresql":
        # psycopg2 is Taskyard's driver; left implicit, SQLAlchemy would pick
        # whichever driver happens to be installed (psycopg 3 if present).
        return "postgresql+psycopg2" + raw[len(scheme) :]
    return raw


def _parse_queue_prefix(raw: str) -> str:
    if raw and not all(ch.isalnum() or ch in "._-" for ch in raw):
        raise ValueError("may contain only letters, digits, '.', '_' and '-'")
    if raw and not (raw[0].isalpha() or raw[0] == "_"):
        raise ValueError("must start with a letter or '_'")
    return raw


def _parse_http_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return raw.strip().rstrip("/")


def _parse_header_name(raw: str) -> str:
    if not all(ch.isalnum() or ch == "-" for ch in raw):
        raise ValueError("may contain only letters, digits and '-'")
    return raw


def _read(
    env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T, expected: str
) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise SettingsError(
            f"{name}={hide_password(raw)!r} is invalid: expected {expected} ({exc})"
        ) from exc


def _read_secret_keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated Fernet keys; an error names the variable and the position, never a key."""
    keys = tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())
    if keys:
        from cryptography.fernet import Fernet  # only when keys are set: every command reads this
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise SettingsError(
                f"{name} is invalid: key number {position} is not a Fernet key (expected "
                "comma-separated urlsafe base64 32-byte keys; generate one with "
                "Fernet.generate_key() from the cryptography package)"
            ) from None
    return keys


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the environment (or `env`) once and return the settings."""
    env = os.environ if env is None else env
    d = Settings()
    p = "TASKYARD_"
    return Settings(
        broker_url=_read(env, "BROKER_URL", _parse_broker_url, d.broker_url, "an AMQP URL"),
        database_url=_read(
            env, "DATABASE_URL", _parse_database_url, d.database_url, "a database URL"
        ),
        queue_prefix=_read(
            env, p + "QUEUE_PREFIX", _parse_queue_prefix, d.queue_prefix, "a queue-name prefix"
        ),
        queue_type=_read(
            env,
            p + "QUEUE_TYPE",
            _parse_choice(*QUEUE_TYPES),
            d.queue_type,
            " or ".join(QUEUE_TYPES),
        ),
        hostname=_read(env, p + "HOSTNAME", str.strip, d.hostname, "a host name"),
        tenants=_read(
            env, p + "TENANTS", _parse_tenants, d.tenants, "comma-separated tenant ids, e.g. 7,9"
        ),
        tenant_refresh_seconds=_read(
            env,
            p + "TENANT_REFRESH_SECONDS",
            _parse_positive_float,
            d.tenant_refresh_seconds,
            "a number of seconds",
        ),
        heartbeat_seconds=_read(
            env,
            p + "HEARTBEAT_SECONDS",
            _parse_positive_float,
            d.heartbeat_seconds,
            "a number of seconds",
        ),
        group_commit_linger_ms=_read(
            env,
            p + "GROUP_COMMIT_LINGER_MS",
            _parse_int(0),
            d.group_commit_linger_ms,
            "milliseconds",
        ),
        max_attempts=_read(
            env, p + "MAX_ATTEMPTS", _parse_int(1), d.max_attempts, "a whole number >= 1"
        ),
        min_backoff_ms=_read(
            env, p + "MIN_BACKOFF_MS", _parse_int(0), d.min_backoff_ms, "milliseconds"
        ),
        max_backoff_ms=_read(
            env, p + "MAX_BACKOFF_MS", _parse_int(1), d.max_backoff_ms, "milliseconds"
        ),
        http_connect_timeout=_read(
            env,
            p + "HTTP_CONNECT_TIMEOUT",
            _parse_positive_float,
            d.http_connect_timeout,
            "seconds",
        ),
        http_read_timeout=_read(
            env, p + "HTTP_READ_TIMEOUT", _parse_positive_float, d.http_read_timeout, "seconds"
        ),
        http_max_bytes=_read(
            env, p + "HTTP_MAX_BYTES", _parse_int(1), d.http_max_bytes, "a size in bytes"
        ),
        http_allow_private=_read(
            env, p + "HTTP_ALLOW_PRIVATE", _parse_bool, d.http_allow_private, "true or false"
        ),
        job_retention_days=_read(
            env, p + "JOB_RETENTION_DAYS", _parse_int(1), d.job_retention_days, "a number of days"
        ),
        db_prepared_statements=_read(
            env,
            p + "DB_PREPARED_STATEMENTS",
            _parse_bool,
            d.db_prepared_statements,
            "true or false",
        ),
        broker_delay_max_seconds=_read(
            env,
            p + "BROKER_DELAY_MAX_SECONDS",
            _parse_positive_float,
            d.broker_delay_max_seconds,
            "a number of seconds",
        ),
        log_format=_read(
            env, p + "LOG_FORMAT", _parse_choice("text", "json"), d.log_format, "text or json"
        ),
        log_level=_read(
            env,
            p + "LOG_LEVEL",
            _parse_choice("debug", "info", "warning", "error"),
            d.log_level,
            "debug, info, warning or error",
        ).upper(),
        metrics_host=_read(env, p + "METRICS_HOST", str, d.metrics_host, "a host address"),
        metrics_port=_read(
            env, p + "METRICS_PORT", _parse_port, d.metrics_port, "a TCP port number"
        ),
        scheduler_probe_port=_read(
            env,
            p + "SCHEDULER_PROBE_PORT",
            _parse_port,
            d.scheduler_probe_port,
            "a TCP port number (0: no probe)",
        ),
        prefetch=_read(
            env,
            p + "PREFETCH",
            _parse_int(0),
            d.prefetch,
            "a whole number of messages >= 0 (0: 8 per worker thread)",
        ),
        tenant_weights=_read(
            env,
            p + "TENANT_WEIGHTS",
            _parse_tenant_weights,
            d.tenant_weights,
            "comma-separated tenant=weight pairs, e.g. 12=2,40=0.5",
        ),
        metrics_tenant_labels=_read(
            env,
            p + "METRICS_TENANT_LABELS",
            _parse_int(0),
            d.metrics_tenant_labels,
            "a whole number of tenants >= 0",
        ),
        secret_keys=_read_secret_keys(env, p + "SECRET_KEYS"),
        web_host=_read(env, p + "WEB_HOST", str, d.web_host, "a host address"),
        web_port=_read(env, p + "WEB_PORT", _parse_port, d.web_port, "a TCP port number"),
        web_secret_key=_read(
            env, p + "WEB_SECRET_KEY", str.strip, d.web_secret_key, "a long random string"
        ),
        web_session_minutes=_read(
            env, p + "WEB_SESSION_MINUTES", _parse_int(1), d.web_session_minutes, "minutes >= 1"
        ),
        web_cookie_secure=_read(
            env, p + "WEB_COOKIE_SECURE", _parse_bool, d.web_cookie_secure, "true or false"
        ),
        web_proxy_user_header=_read(
            env,
            p + "WEB_PROXY_USER_HEADER",
            _parse_header_name,
            d.web_proxy_user_header,
            "an HTTP header name, e.g. X-Forwarded-User",
        ),
        rabbitmq_api_url=_read(
            env,
            p + "RABBITMQ_API_URL",
            _parse_http_url,
            d.rabbitmq_api_url,
            "an http:// or https:// URL",
        ),
    )
