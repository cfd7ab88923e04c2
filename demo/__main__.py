"""`python -m demo`: the same as `taskyard demo`."""

from demo.command import demo_command

demo_command()
