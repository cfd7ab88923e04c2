# Taskyard's image: one image for the worker (the default command), the scheduler
# (`periodiq schedules`) and the migration job (`taskyard migrate`).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --user-group taskyard

WORKDIR /app

# Dependencies get their own layer, rebuilt only when pyproject.toml changes: the
# list is read from pyproject.toml, so the source is not needed yet.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself; its dependencies are already installed above.
COPY . .
RUN pip install --no-deps .

USER taskyard

# Prometheus metrics of the worker (TASKYARD_METRICS_PORT; set TASKYARD_METRICS_HOST=0.0.0.0),
# and its probes beside them: /healthz (live) and /readyz (ready).
EXPOSE 9191

# Live: every worker process of the command beats and has all its threads. The
# scheduler and the migration run other commands: their services turn this off.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "middleware.probes", "live"]

# On SIGTERM a worker stops taking messages and gives the ones it runs 60 s to finish
# (what is unfinished then is redelivered); a platform's grace period must be longer.
CMD ["dramatiq", "actors", "--processes", "2", "--threads", "8", "--worker-shutdown-timeout", "60000"]
