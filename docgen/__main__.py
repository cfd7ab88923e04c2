"""`python -m docgen [--check]`: write the reference pages, or check they are up to date."""

from __future__ import annotations

import os
import sys

# The pages describe the code, not a deployment: importing the actors builds the broker
# from the environment, so the generator pins the in-process broker and SQLite (nothing
# connects) and sees the same actors, settings and metrics on every machine.
os.environ["BROKER_URL"] = "stub://"
os.environ["DATABASE_URL"] = "sqlite://"
os.environ.pop("TASKYARD_QUEUE_PREFIX", None)

from docgen.pages import main  # (imported after the environment is pinned)

sys.exit(main(sys.argv[1:]))
