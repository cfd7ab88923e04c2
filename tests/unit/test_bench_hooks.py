"""bench/hooks.py: the dispatch-only timing of a job's middleware hooks."""

from __future__ import annotations

import re

import pytest
from dramatiq.middleware import Middleware

from bench import hooks
from transport.hooks import defines_hook


class Defines(Middleware):
    def before_ack(self, broker: object, message: object) -> None:
        raise AssertionError("the stand-in must not run the real hook")


def test_stand_ins_define_the_same_hooks_and_do_nothing() -> None:
    real = [Defines(), Middleware()]
    made = hooks.stand_ins(real)
    assert [defines_hook(m, "before_ack") for m in made] == [True, False]
    assert [defines_hook(m, "after_ack") for m in made] == [False, False]
    made[0].before_ack(None, None)  # type: ignore[attr-defined]


def test_it_times_both_dispatches_of_taskyards_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert hooks.main(["--count", "20", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    found = {
        m[1]: (int(m[2]), float(m[3]))
        for m in re.finditer(
            r"^run 1 (dramatiq|taskyard)'s dispatch: "
            r"(\d+) hooks called a job, ([\d.]+) µs CPU a job$",
            out,
            re.M,
        )
    }
    assert set(found) == {"dramatiq", "taskyard"}, out
    stack = int(re.search(r"^(\d+) middleware;", out, re.M)[1])  # type: ignore[index]
    # Dramatiq calls every middleware for each of the six signals; Taskyard, fewer.
    assert found["dramatiq"][0] == stack * 6
    assert 0 < found["taskyard"][0] < found["dramatiq"][0]
    assert all(cpu > 0 for _calls, cpu in found.values())


def test_a_count_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        hooks.main(["--count", "0"])
    assert exit_.value.code == 2
    assert "--count" in capsys.readouterr().err
