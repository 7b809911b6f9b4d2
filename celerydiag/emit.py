"""The one output path of every command: ``--output`` opened first, colour chosen once, a closed
stdout handled the same everywhere, the summary line on stderr, the exit code.

A command calls :func:`open_output` before it does any work, so an unwritable ``--output`` costs
the user a second, not a 30 s run (exit 2, one line naming the path). The report goes to a
temporary file beside the destination and replaces it with :func:`os.replace` only when the
command finishes: a run that fails or is interrupted leaves an existing file as it was. A
destination that is not a regular file (``/dev/null``, a FIFO) is written directly; replacing it
would destroy the device node.

A reader that goes away (``celerydiag doctor | head -1``) is not a finding: every command then
exits :attr:`ExitCode.STDOUT_CLOSED` (141, what a shell reports for ``yes | head``) and still
prints its summary line on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, cast

import click

from celerydiag.errors import DiagError, ExitCode, unreachable_lines
from celerydiag.findings import Report, Severity
from celerydiag.render import OutputFormat

Body = Callable[[TextIO, bool], None]  # writes the document to the stream, in colour or not


class StdoutClosed(Exception):
    """The reader of stdout went away. Not an OSError on purpose: rich turns a BrokenPipeError
    inside Console.print into ``SystemExit(1)`` and click does the same outside it, and 1 means
    "findings" here; this passes through both to :meth:`Output.emit`."""


class StdoutFailed(Exception):
    """stdout refused the document for another reason: a full disk (``> /dev/full``, ENOSPC), a
    quota, an I/O error. The user's environment, not our bug: :meth:`Output.emit` makes it exit 2
    with one line. Not an OSError, for the same reason as :class:`StdoutClosed`."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


class GuardedStdout:
    """sys.stdout for a renderer, with a broken pipe raised as :class:`StdoutClosed` and any
    other write error as :class:`StdoutFailed`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise StdoutClosed from None
        except OSError as exc:
            raise StdoutFailed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise StdoutClosed from None
        except OSError as exc:
            raise StdoutFailed(exc) from None

    def __getattr__(self, name: str) -> object:  # isatty, fileno, encoding: the real stream's
        return getattr(self._stream, name)


class Output:
    """Where one command's document goes. Built by :func:`open_output`, finished by :meth:`emit`
    (or discarded by the ``with`` block when the command raises)."""

    def __init__(self, path: str | None, color: bool, stream: TextIO | None = None,
                 temp: str | None = None, final: str | None = None) -> None:
        self.path = path  # as the user wrote it: what error lines name
        self.color = color
        self._stream = stream  # an open --output, or None for stdout
        self._temp = temp  # the temporary file that becomes ``final`` at the end
        self._final = final

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def emit(self, body: Body, summary: str | None, code: ExitCode) -> ExitCode:
        """Write the document, put it in place, print ``summary`` on stderr, return ``code`` (or
        STDOUT_CLOSED when the reader of stdout went away). ``summary`` None: a listing, which
        says something on stderr only when it was cut off."""
        closed = False
        if self._stream is not None:
            try:
                body(self._stream, False)
                self._stream.flush()
            except OSError as exc:
                raise DiagError(f"cannot write --output {self.path}: {exc.strerror or exc}") from None
            self._commit()
        else:
            stdout = GuardedStdout(sys.stdout)
            try:
                body(cast(TextIO, stdout), self.color)
                stdout.flush()
            except StdoutClosed:
                closed = True
                silence_stdout()
            except StdoutFailed as exc:
                silence_stdout()  # what is still buffered must not fail again at exit (exit 120)
                raise DiagError(f"cannot write the output to stdout: {exc}",
                                "free space where stdout goes, or write it elsewhere with --output FILE") from None
        if closed:
            cut = "stdout closed before the output was complete"
            summary = f"{summary}; {cut}" if summary else f"celerydiag: {cut}"
        if summary:
            click.echo(summary, err=True)
        return ExitCode.STDOUT_CLOSED if closed else code

    def _commit(self) -> None:
        stream, self._stream = self._stream, None
        assert stream is not None
        try:
            stream.close()
            if self._temp and self._final:
                os.replace(self._temp, self._final)
                self._temp = None
        except OSError as exc:
            raise DiagError(f"cannot write --output {self.path}: {exc.strerror or exc}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop what was not committed: the destination keeps what it held before the run."""
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
            self._stream = None
        if self._temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp)
            self._temp = None


def open_output(path: str | None, fmt: OutputFormat, no_color: bool) -> Output:
    """Check and open ``--output`` now, before any work; choose colour (text on a terminal only,
    never in a file, never with --no-color or NO_COLOR). HTML needs matplotlib: refused here, before
    any work, with the one line that installs it."""
    if fmt is OutputFormat.HTML:
        from celerydiag.render.charts import require

        require()
    if not path:
        color = (fmt is OutputFormat.TEXT and not no_color and not os.environ.get("NO_COLOR")
                 and sys.stdout.isatty())
        return Output(None, color)
    try:
        return _open_file(path)
    except OSError as exc:
        raise DiagError(f"cannot write --output {path}: {exc.strerror or exc}") from None  # one line, exit 2


def check_writable(path: str, option: str) -> None:
    """Refuse now, before any work (exit 2, one line naming ``option``), a file a command writes
    besides its document (``capture --write``, ``poll-model --plot``) when it cannot be created or
    replaced: the same checks as ``--output``. What only the write can tell (a full disk) is
    :func:`writing`'s."""
    try:
        _writable_mode(path)
    except OSError as exc:
        raise DiagError(f"cannot write {option} {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def writing(option: str, path: str, errnos: frozenset[int] | None = None) -> Iterator[None]:
    """An OSError while the block writes ``path`` is the user's disk, not our bug: exit 2 with one
    line naming ``option``. ``errnos``: only those (when the block also reads a socket, whose
    errors are not the file's)."""
    try:
        yield
    except OSError as exc:
        if errnos is not None and exc.errno not in errnos:
            raise
        raise DiagError(f"cannot write {option} {path}: {exc.strerror or exc}") from None


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def _writable_mode(path: str) -> int | None:
    """``path``'s mode (None when it does not exist yet), or the OSError that writing it would
    meet: a directory, a file we may not write, a folder that does not exist or refuses us."""
    try:
        mode: int | None = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory")
    if mode is not None and not stat.S_ISREG(mode):  # /dev/null, a FIFO: written in place
        return mode
    final = os.path.realpath(path)
    if mode is not None and not os.access(final, os.W_OK):
        raise PermissionError(13, "Permission denied")
    folder = os.path.dirname(final)
    if not os.path.isdir(folder):
        raise FileNotFoundError(2, "No such directory")
    if mode is None and not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied")
    return mode


def _open_file(path: str) -> Output:
    mode = _writable_mode(path)
    if mode is not None and not stat.S_ISREG(mode):  # /dev/null, a FIFO: write it in place
        return Output(path, False, open(path, "w", encoding="utf-8"))
    final = os.path.realpath(path)  # a symlink keeps pointing at the report
    folder = os.path.dirname(final)
    temp = os.path.join(folder, f".{os.path.basename(final)}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode open() would give
    try:
        if mode is not None:
            shutil.copymode(final, temp)
        stream = os.fdopen(fd, "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    return Output(path, False, stream, temp=temp, final=final)


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's last flush cannot fail again on exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---- reports (doctor, probe, report) -------------------------------------------------------------

def fail_on_severity(value: str) -> Severity | None:
    return None if value == "never" else Severity.parse(value)


def exit_code(worst: Severity, fail_on: str) -> ExitCode:
    """FINDINGS when the worst finding reaches --fail-on (a passed check never does), else OK."""
    threshold = fail_on_severity(fail_on)
    if threshold is not None and worst >= threshold and worst > Severity.OK:
        return ExitCode.FINDINGS
    return ExitCode.OK


def severity_counts(severities: Iterable[Severity]) -> str:
    counts = dict.fromkeys(Severity, 0)
    for s in severities:
        counts[s] += 1
    return (f"{counts[Severity.CRITICAL]} critical, {counts[Severity.WARNING]} warning, "
            f"{counts[Severity.INFO]} info, {counts[Severity.OK]} ok")


def emit_report(out: Output, report: Report, fmt: OutputFormat, fail_on: str, *,
                unreachable_said: bool = False, verbose: bool = False) -> ExitCode:
    """A Report in ``fmt``, the severity counts (and failed probes) as the summary line. A dead
    side's error comes first on stderr: here, unless doctor already said it before its probes
    (``unreachable_said``); then the summary only points back at it. ``verbose``: the passed checks
    as rows, not folded into one line."""
    from celerydiag.render import render

    junit_threshold = fail_on_severity(fail_on) or Severity.CRITICAL
    summary = f"celerydiag: {severity_counts([f.severity for f in report.findings])}"
    failed = [p.name for p in report.probes if str(p.status) == "failed"]
    if failed:
        summary += f"; probes failed: {', '.join(failed)}"
    # The target's fault outranks its findings: first on stderr, and exit 3.
    if unreachable_said and report.unreachable:
        summary += f"; unreachable: {', '.join(report.unreachable)} (see the first line)"
    elif report.unreachable:
        summary = "".join(unreachable_lines(report.unreachable.values())) + summary
    code = ExitCode.UNREACHABLE if report.unreachable else exit_code(report.worst(), fail_on)
    return out.emit(lambda stream, color: render(report, fmt, stream, fail_on=junit_threshold, color=color,
                                                          verbose=verbose),
                    summary, code)
