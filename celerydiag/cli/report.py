"""`celerydiag report A.json B.json`: re-render saved reports, merging several hosts into one."""

from __future__ import annotations

import json
from typing import Any

import click

from celerydiag import __version__
from celerydiag.cli import output_options
from celerydiag.emit import emit_report, open_output
from celerydiag.errors import ExitCode, InputError
from celerydiag.render import OutputFormat


@click.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@output_options
def command(files: tuple[str, ...], fmt: OutputFormat, output: str | None, fail_on: str,
            budget_ms: float, no_color: bool, verbose: bool = False) -> ExitCode:
    """Re-render saved JSON reports; with several, merge them into one ranked report.

    Each finding keeps the host it came from (in its evidence) so a merged report says where;
    --budget-ms re-rates every finding whose severity follows its impact; the same file given
    twice counts once.
    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 bad usage or a file
    it cannot read (not JSON, not a report, a report from a newer celerydiag, a malformed field:
    one line saying which), 4 internal error (a bug of ours; --traceback shows it), 130
    Ctrl-C, 143 SIGTERM, 141 stdout closed early (`| head`).
    """
    from celerydiag.merge import merge_reports

    with open_output(output, fmt, no_color) as out:  # -o may name one of the inputs: replaced at the end
        reports = [load(path) for path in files]
        # A saved report was rated against the budget it was made with; keep that budget unless the
        # user names one (then every rated finding is judged again: rank.rate).
        explicit = click.get_current_context().get_parameter_source("budget_ms") != click.core.ParameterSource.DEFAULT
        merged = merge_reports(reports, budget_ms if explicit else None)
        return emit_report(out, merged, fmt, fail_on, verbose=verbose)


H_REPORT = "produce one with `celerydiag doctor --format json -o FILE`"
# celerydiag documents that are not reports: what each is, and what to do with it instead.
OTHER_DOCUMENTS = {
    "celerydiag.capture/": ("a capture document (`capture --format json`), not a report",
                            "re-read the capture itself: `celerydiag capture --read FILE.pcap`; for a report "
                            "`report` can merge, run `celerydiag doctor --pcap FILE.pcap --format json -o FILE`"),
    "celerydiag.bench-serialize/": ("a bench-serialize document, not a report",
                                    "compare two of them with `celerydiag bench-serialize --compare FILE`"),
    "celerydiag.poll-model/": ("a poll-model document, not a report",
                               "run `celerydiag poll-model` again to see it; `report` reads doctor/probe JSON"),
}


def load(path: str) -> Any:
    """The saved report at ``path``, or an InputError (exit 2) with one line saying why not: a newer
    celerydiag made it, it is another celerydiag document (a capture), or which field is wrong."""
    from celerydiag.findings import Report, UnreadableReport

    try:
        with open(path, "rb") as stream:
            data = json.loads(stream.read().decode("utf-8-sig"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except RecursionError:
        raise InputError(f"{path} is not a celerydiag JSON report: it nests too deep to read", H_REPORT) from None
    except ValueError as exc:  # JSON's own error, or the bytes are not UTF-8
        raise InputError(f"{path} is not a celerydiag JSON report: not JSON ({_first_line(exc)})", H_REPORT) from None
    try:
        return Report.from_dict(data)
    except UnreadableReport as exc:
        if exc.newer:
            made_by = data.get("version")
            by = f" {made_by}" if isinstance(made_by, str) and made_by else ""
            raise InputError(f"{path} was made by a newer celerydiag{by} ({exc.schema}); this one "
                             f"({__version__}) reads celerydiag.report/2 and /1",
                             f"upgrade celerydiag{' to' + by if by else ''} to read it") from None
        for prefix, (what, hint) in OTHER_DOCUMENTS.items():
            if isinstance(exc.schema, str) and exc.schema.startswith(prefix):
                raise InputError(f"{path} is {what}", hint) from None
        raise InputError(f"{path} is not a celerydiag JSON report: {exc}", H_REPORT) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
