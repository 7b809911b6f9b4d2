"""Progress on stderr, or nothing: the only place the engine meets the terminal.

Probes call ``ctx.progress.step(...)``; the CLI picks :class:`RichProgress` when stderr is a
terminal and the report is not JSON, else :class:`NullProgress`. The report itself always goes to
stdout, so ``--format json | jq`` keeps working while progress draws.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    def start(self, name: str, total: float | None = None) -> None: ...
    def step(self, advance: float = 1, description: str | None = None) -> None: ...
    def done(self) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def start(self, name: str, total: float | None = None) -> None:
        pass

    def step(self, advance: float = 1, description: str | None = None) -> None:
        pass

    def done(self) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """One transient bar per probe on stderr, cleared when the report prints."""

    def __init__(self, prefix: str = "probe ") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as _Progress

        self._progress = _Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(),  # copes with an unknown total ("3/?")
            console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        self._task: Any = None
        self._name = ""
        self._prefix = prefix  # "probe " in doctor; commands that are not probes pass ""

    def start(self, name: str, total: float | None = None) -> None:
        self.done()
        self._name = name
        self._task = self._progress.add_task(f"{self._prefix}{name}", total=total)

    def step(self, advance: float = 1, description: str | None = None) -> None:
        if self._task is not None:
            desc = f"{self._prefix}{self._name}: {description}" if description else None
            self._progress.update(self._task, advance=advance, description=desc)

    def done(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None

    def close(self) -> None:
        self.done()
        self._progress.stop()


def make_progress(enabled: bool, prefix: str = "probe ") -> Progress:
    """A bar on stderr when it is a terminal and the caller wants one (not with --format json)."""
    if enabled and sys.stderr.isatty():
        return RichProgress(prefix)
    return NullProgress()
