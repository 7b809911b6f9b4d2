"""`celerydiag report A.json B.json`: re-render saved reports, merging several hosts into one."""

from __future__ import annotations

import json
from typing import Any

import click

from celerydiag.cli import output_options
from celerydiag.emit import emit_report, open_output
from celerydiag.errors import ExitCode, InputError
from celerydiag.render import OutputFormat


@click.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@output_options
def command(files: tuple[str, ...], fmt: OutputFormat, output: str | None, fail_on: str,
            budget_ms: float, no_color: bool) -> ExitCode:
    """Re-render saved JSON reports; with several, merge them into one ranked report.

    Each finding keeps the host it came from (in its evidence) so a merged report says where;
    --budget-ms re-rates every finding whose severity follows its impact; the same file given
    twice counts once.
    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 bad usage or an
    unreadable file, 141 stdout closed early (`| head`).
    """
    from celerydiag.merge import merge_reports

    with open_output(output, fmt, no_color) as out:  # -o may name one of the inputs: replaced at the end
        reports = [load(path) for path in files]
        # A saved report was rated against the budget it was made with; keep that budget unless the
        # user names one (then every rated finding is judged again: rank.rate).
        explicit = click.get_current_context().get_parameter_source("budget_ms") != click.core.ParameterSource.DEFAULT
        merged = merge_reports(reports, budget_ms if explicit else None)
        return emit_report(out, merged, fmt, fail_on)


def load(path: str) -> Any:
    from celerydiag.findings import Report

    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
        if not isinstance(data, dict):
            raise ValueError(f"its top level is a JSON {type(data).__name__}, not an object")
        return Report.from_dict(data)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except RecursionError:
        raise InputError(f"{path} nests too deep to read: not a celerydiag JSON report",
                         "produce one with `celerydiag doctor --format json -o FILE`") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # AttributeError: JSON not an object
        raise InputError(f"{path} is not a celerydiag JSON report: {exc}",
                         "produce one with `celerydiag doctor --format json -o FILE`") from None
