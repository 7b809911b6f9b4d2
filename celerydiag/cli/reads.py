"""Which probe reads which option, said in --help and enforced: an option that no selected probe
reads is a usage error (``probe broker --updates 50``: "--updates is read by the e2e probe only"),
not a value silently ignored while the user believes it shaped the run.

The knowledge is :data:`celerydiag.probe.READS` (beside the probe registry); this module only
turns it into help text and usage errors for the commands that take the probe options (doctor,
probe). Not a command module: ``COMMAND_MODULES`` does not list it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from celerydiag.findings import Cause
from celerydiag.probe import READS

GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def readers(option: str) -> list[Cause]:
    """The causes whose probe reads ``option``, in run order."""
    return [cause for cause in Cause if option in READS[cause]]


def _names(causes: Iterable[Cause]) -> str:
    names = [str(c) for c in causes]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def readers_note(option: str) -> str:
    """``"Read by the broker and e2e probes."`` for the help text of ``option``."""
    causes = readers(option)
    if not causes:
        return ""
    return f"Read by the {_names(causes)} probe{'s' if len(causes) > 1 else ''}."


def name_readers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Append to the help of each probe option already on ``fn`` which probes read it (so the help
    and :data:`READS` cannot disagree). Apply after the ``click.option`` decorators."""
    for param in getattr(fn, "__click_params__", ()):
        options = [opt for opt in param.opts if opt.startswith("--")]
        note = readers_note(options[0]) if options else ""
        if note and isinstance(param, click.Option):
            param.help = f"{(param.help or '').rstrip()} {note}"
    return fn


def refuse_unread(probes: Sequence[Any], static: bool) -> None:
    """Raise a usage error (exit 2) for an option the user gave that none of the probes that will
    run reads: ``probes`` are the selected Probe classes; with ``static`` only the static ones run."""
    ctx = click.get_current_context()
    selected = {cls.cause for cls in probes}
    running = {cls.cause for cls in probes if cls.static or not static}
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        option = max(param.opts, key=len)
        causes = readers(option)
        if not causes or ctx.get_parameter_source(param.name) not in GIVEN or running & set(causes):
            continue
        only = f"{option} is read by the {_names(causes)} probe{'s' if len(causes) > 1 else ''} only"
        if static and selected & set(causes):
            raise click.UsageError(f"{only}, which --static does not run: drop it", ctx)
        run_it = f", or run `celerydiag probe {causes[0]}`" if len(causes) == 1 else ""
        raise click.UsageError(f"{only}, not by {_names(c for c in Cause if c in selected)}: drop it{run_it}", ctx)
