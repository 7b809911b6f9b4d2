"""Every number a user types is refused at once when it is not a finite number.

click's FloatRange checks a range by comparing, and a comparison with nan is always false, so
``--budget-ms nan`` or ``--timeout nan`` used to run (a NaN budget rates nothing, a NaN timeout
waits forever or not at all). This walks every float option of every command, so a new one is
covered the day it is added, and checks the duration options that parse their own text.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click
import pytest

from celerydiag.cli import COMMAND_MODULES, main
from celerydiag.errors import ExitCode

REPORTS = Path(__file__).resolve().parents[1] / "fixtures" / "reports"
# What a command needs besides the option under test to get as far as parsing it.
BASE_ARGS = {"report": [str(next(REPORTS.glob("*.json")))]}


def float_options() -> list[tuple[str, str]]:
    found = []
    for module in COMMAND_MODULES:
        command = importlib.import_module(module).command
        name = command.name or module.rsplit(".", 1)[1]
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, (click.types.FloatParamType,
                                                                           click.FloatRange)):
                found.append((name, max(param.opts, key=len)))
    return found


def test_the_walk_finds_the_float_options_the_issue_names():
    found = set(float_options())
    for expected in [("doctor", "--timeout"), ("doctor", "--budget-ms"), ("doctor", "--poll-interval"),
                     ("probe", "--max-seconds"), ("report", "--budget-ms"), ("capture", "--duration"),
                     ("bench-serialize", "--bandwidth-mbit"), ("poll-model", "--request-budget")]:
        assert expected in found, sorted(found)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
@pytest.mark.parametrize(("command", "option"), float_options())
def test_a_float_option_refuses_what_is_not_a_finite_number(capsys, command, option, value):
    code = main([command, *BASE_ARGS.get(command, []), option, value])
    _, err = capsys.readouterr()
    assert code == ExitCode.USAGE, err
    assert "Traceback" not in err
    assert option in err and "Usage:" in err, err  # click's usage error, naming the option


DURATIONS = ["--interval", "--threshold", "--read-latency", "--target-delay", "--watch-seconds",
             "--watch-interval"]


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("option", DURATIONS)
def test_a_duration_option_refuses_nan_and_inf(capsys, option, value):
    code = main(["poll-model", option, value])
    _, err = capsys.readouterr()
    assert code == ExitCode.USAGE, err
    assert option in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("spec", ["fixed:nan", "jitter:1s,nan", "backoff:1s,inf", "smart:inf"])
def test_a_strategy_value_refuses_nan_and_inf(capsys, spec):
    for argv in (["poll-model", "--strategy", spec], ["doctor", "--static", "--poll-strategy", spec]):
        code = main(argv)
        _, err = capsys.readouterr()
        assert code == ExitCode.USAGE, (argv, err)
        assert ("--strategy" if argv[0] == "poll-model" else "--poll-strategy") in err, err


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "infMB"])
def test_a_size_option_refuses_what_is_not_a_finite_number(capsys, value):
    code = main(["bench-serialize", "--max-size", value, "--quick", "-s", "json", "-k", "progress-meta"])
    _, err = capsys.readouterr()
    assert code == ExitCode.USAGE, err
    assert "--max-size" in err and "Traceback" not in err, err
