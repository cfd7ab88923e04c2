"""`taskyard demo`: the demo's command, defined beside the demo itself (demo/command.py)."""

from __future__ import annotations

from cli.common import main
from demo.command import demo_command

main.add_command(demo_command)
