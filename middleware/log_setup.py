"""The one place Taskyard sets up logging from its settings: workers, the scheduler, `taskyard`.

- `configure_logging(settings)`: the root logger's level (`TASKYARD_LOG_LEVEL`) and
  its handlers' format (`TASKYARD_LOG_FORMAT`); a handler on stderr if it has none.
- `WorkerLogging`, a middleware: in a `dramatiq actors` worker process, from its
  boot to its shutdown, every line goes through one `QueuedLines` handler, so a
  thread that logs (a job's thread) never waits for the pipe to Dramatiq's main
  process.  That process reads its workers' pipes only once every worker has
  booted: what a booting worker logs meanwhile (the outcome of the jobs it has
  started already, anything its actors log) waits in memory, up to a bound,
  instead of holding every thread on a full pipe.
- `brokers` imports this module before any library it loads: in a process of
  `dramatiq actors` or `periodiq`, the settings apply before those libraries
  log their first lines (`configure_command_early`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from dramatiq.broker import Broker
from dramatiq.compat import StreamablePipe
from dramatiq.middleware import Middleware
from dramatiq.worker import Worker

from middleware.metrics_logging import JsonFormatter, QueuedLines
from settings import Settings, SettingsError, load_settings

# The format of a handler this module makes (Dramatiq's own, for the same look).
TEXT_FORMAT = (
    "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"
)
# Libraries whose INFO lines say nothing an operator acts on, at every boot: alembic's
# plugin set-up and migration context.  Shown at TASKYARD_LOG_LEVEL=debug.
CHATTY_LIBRARIES = ("alembic",)
# How long a stopping worker waits for its queued lines to be written.
DRAIN_SECONDS = 5.0


def configure_logging(
    settings: Settings, *, quiet_libraries: bool = True, text_format: str = TEXT_FORMAT
) -> None:
    """Apply `TASKYARD_LOG_LEVEL` and `TASKYARD_LOG_FORMAT` to this process's root logger.

    A root logger without a handler (a NullHandler aside) gets one on stderr,
    in `text_format` unless the format is JSON.  `quiet_libraries` holds
    CHATTY_LIBRARIES to WARNING unless the level is DEBUG.
    """
    level = logging.getLevelNamesMapping()[settings.log_level]
    root = logging.getLogger()
    if not [h for h in root.handlers if not isinstance(h, logging.NullHandler)]:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(text_format))
        root.addHandler(handler)
    root.setLevel(level)
    if quiet_libraries:
        quiet = logging.NOTSET if level <= logging.DEBUG else max(level, logging.WARNING)
        for name in CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(quiet)
    if settings.log_format == "json":
        for target in _writing_handlers(root):
            target.setFormatter(JsonFormatter())


def _writing_handlers(root: logging.Logger) -> list[logging.Handler]:
    """The handlers that format lines: a QueuedLines's targets rather than itself."""
    found: list[logging.Handler] = []
    for handler in root.handlers:
        found += handler.targets if isinstance(handler, QueuedLines) else [handler]
    return found


def load_settings_or_exit() -> Settings:
    """The settings; a variable Taskyard cannot use ends the process with one line naming it."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}: fix that variable of the environment") from None


class WorkerLogging(Middleware):
    """A worker process's log lines go through a bounded queue and one writer thread.

    From `after_process_boot` (before any job thread exists) to
    `after_worker_shutdown` (after the last job), the root logger's handlers,
    sys.stdout and sys.stderr are behind one `QueuedLines`: logging and printing
    never wait, and a line that does not fit is dropped and counted (see
    `middleware/metrics_logging.py`).  At shutdown the queued lines are written
    (waiting at most DRAIN_SECONDS) and the usual handlers come back.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queued: QueuedLines | None = None
        self._saved: tuple[list[logging.Handler], Any, Any] | None = None

    def after_process_boot(self, broker: Broker) -> None:
        """Apply the settings and put the queue in front of the root logger's handlers."""
        configure_logging(self.settings)
        if self.queued is not None:
            return
        root = logging.getLogger()
        handlers = list(root.handlers)
        self._saved = (handlers, sys.stdout, sys.stderr)
        self.queued = QueuedLines(handlers, raw=sys.stderr)
        for handler in handlers:
            root.removeHandler(handler)
        root.addHandler(self.queued)
        sys.stdout = sys.stderr = self.queued.stream()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Write what is queued, then give the root logger and stderr their usual path back."""
        queued, saved = self.queued, self._saved
        if queued is None or saved is None:
            return
        handlers, stdout, stderr = saved
        root = logging.getLogger()
        root.removeHandler(queued)
        for handler in handlers:
            root.addHandler(handler)
        sys.stdout, sys.stderr = stdout, stderr
        queued.close(DRAIN_SECONDS)
        self.queued, self._saved = None, None


def in_command_process() -> bool:
    """Whether this is a process of `dramatiq actors` (a worker or fork) or of `periodiq`."""
    # Dramatiq sends a worker's and a fork's stderr into its pipe to the main process.
    if isinstance(sys.stderr, StreamablePipe):
        return True
    return os.path.basename(sys.argv[0] if sys.argv else "") == "periodiq"


def configure_command_early() -> None:
    """In a worker, fork or scheduler process, apply the settings before the libraries log.

    Anywhere else (a producer importing `brokers`, a test) it does nothing: the
    process's own logging set-up is left alone.  A variable Taskyard cannot use
    is left for `brokers` to report.
    """
    if not in_command_process():
        return
    try:
        settings = load_settings()
    except SettingsError:
        # Reported by `brokers` in a moment: let that line stand alone.
        for name in CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
        return
    configure_logging(settings)


configure_command_early()
