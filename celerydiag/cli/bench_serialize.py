"""`celerydiag bench-serialize`: what each serializer costs on the payloads your tasks store."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any, TextIO

import click

from celerydiag.cli import FiniteRange, document_options, named_target, target_options
from celerydiag.emit import open_output
from celerydiag.errors import ExitCode, InputError, carrying
from celerydiag.render import OutputFormat

EPILOG = """\b
Examples:
  celerydiag bench-serialize                               # standard payloads x every serializer (~30 s)
  celerydiag bench-serialize --quick -s json -s msgpack    # a quick look at two serializers
  celerydiag bench-serialize --payload meta.json           # the dict you pass to update_state(meta=...)
  celerydiag bench-serialize --backend redis://127.0.0.1:6379/0 --from-backend 5f1c...  # a real stored meta
  celerydiag bench-serialize --format json -o before.json  # then, after a change:
  celerydiag bench-serialize --compare before.json
"""


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        from celerydiag.serialization.harness import parse_size

        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(f"{value!r} is not a size like 64MB, 500k or 1048576 ({exc})", param, ctx)


@click.command("bench-serialize", epilog=EPILOG)
@click.option("-s", "--serializer", "serializers", multiple=True, metavar="NAME",
              help="Serializer to time (repeatable). Default: every one kombu has registered (json, "
                   "pickle, msgpack, yaml, and any your --app registers) plus pickle5 and orjson, "
                   "shown with the code that registers them.")
@click.option("-k", "--payload-kind", "kinds", multiple=True,
              type=click.Choice(["progress-meta", "floats-10k", "ndarray-1mb", "ndarray-10mb",
                                 "dataframe-columns"]),
              help="Standard payload to time (repeatable). Default: all five, unless you give "
                   "--payload or --from-backend, which then run alone.")
@click.option("-p", "--payload", "payload_files", multiple=True, type=click.Path(dir_okay=False),
              help="Your own meta (what you pass to update_state(meta=...)) as a JSON file, or a "
                   "pickle with --trust-pickle. Repeatable.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow --payload to be a pickle. Unpickling runs any code the file holds: only "
                   "for a file you made yourself.")
@click.option("--max-size", type=SizeType(), default="64MB", show_default=True,
              help="Refuse a --payload file or stored meta larger than this, before reading it "
                   "(the benchmark holds several copies in memory).")
@click.option("--from-backend", "task_ids", multiple=True, metavar="TASK_ID",
              help="Time a real stored meta, read (read-only) from the target's result backend "
                   "(needs --app or --backend). Repeatable.")
@target_options
@click.option("--quick", is_flag=True,
              help="Shorter calibration and 3 values per timing (~10 s); spreads get wider.")
@click.option("--bandwidth-mbit", type=FiniteRange(min=1), default=1000.0, show_default=True,
              help="Network speed assumed for the 'per update' column (the payload crosses the "
                   "network several times per update; see the backend model line).")
@click.option("--compare", "compare_path", type=click.Path(dir_okay=False),
              help="A JSON file from an earlier run (--format json -o FILE): show before/after.")
@click.option("--timeout", type=FiniteRange(min=0.1, max=300), default=5.0, show_default=True,
              help="Seconds to wait for the result backend (--from-backend).")
@document_options("table + recommendation; json also feeds --compare")
def command(serializers: tuple[str, ...], kinds: tuple[str, ...], payload_files: tuple[str, ...],
            trust_pickle: bool, max_size: int, task_ids: tuple[str, ...], app: str | None,
            broker: str | None, backend: str | None, quick: bool, bandwidth_mbit: float,
            compare_path: str | None, timeout: float, fmt: OutputFormat, output: str | None,
            no_color: bool) -> ExitCode:
    """Time encode and decode of task-state payloads with each serializer, the way Celery does it.

    Uses kombu's serializer registry (the calls Celery makes), calibrated like pyperf: loop counts
    sized to a minimum time per value, warm-ups discarded, several values, median and relative
    spread (a warning when the machine is noisy), encoded size and peak memory. The per-update
    column adds what your result backend does with the payload (Redis: decode of the old meta,
    SETEX + PUBLISH; database: the row reads and the UPDATE) at --bandwidth-mbit.
    Exit codes: 0 done, 2 bad input (or an unwritable --output, before any work), 3 backend
    unreachable (--from-backend), 130 Ctrl-C, 143 SIGTERM, 141 stdout closed early (`| head`).
    """
    from celerydiag.doctor import collect_meta
    from celerydiag.serialization import harness as ser
    from celerydiag.ui import make_progress

    with open_output(output, fmt, no_color) as out, too_deep_is_input():  # --output fails before the benchmark
        old = ser.read_document(compare_path) if compare_path else None
        target = _target(app, broker, backend, need=bool(task_ids))
        names = _serializers(serializers)
        payloads = [ser.load_payload_file(path, trust_pickle, max_size) for path in payload_files]
        if task_ids:
            from celerydiag.serialization.stored import read_task_meta

            with carrying(target.secrets()):  # the only step that talks to the target
                payloads += [read_task_meta(target, tid, timeout, max_size) for tid in task_ids]
        if kinds or not payloads:
            payloads = [ser.standard_payload(k) for k in (kinds or ser.STANDARD_KINDS)] + payloads
        model = ser.backend_model(target.backend_scheme if target else "redis")
        bandwidth = bandwidth_mbit * 1e6 / 8
        progress = make_progress(enabled=fmt == "text" or output is not None, prefix="")
        progress.start("bench-serialize", total=len(payloads) * len(names))
        try:
            results = ser.run_bench(payloads, names, ser.HarnessConfig.quick() if quick else ser.HarnessConfig(),
                                    on_case=lambda label: progress.step(1, label))
        finally:
            progress.close()
        meta = dict(collect_meta(), target=target.to_dict() if target else None,
                    result_serializer=target.conf.result_serializer if target else None, quick=quick)
        current = str(target.conf.result_serializer) if target else "json"
        doc = ser.bench_document(results, model, bandwidth, payloads, meta, current)
        if old is not None:
            doc["compare"] = ser.compare_documents(old, doc)
        summary = (f"celerydiag: {len(payloads)} payload(s) x {len(names)} serializer(s) timed"
                   + (f"; suggested: {', '.join(doc['suggested'])}" if doc["suggested"] else ""))
        return out.emit(lambda stream, color: _write(doc, fmt, stream, color), summary, ExitCode.OK)


@contextlib.contextmanager
def too_deep_is_input() -> Iterator[None]:
    """A payload nested deeper than Python recurses (a stored meta, or one a serializer rebuilt) is
    the input's limit, not our bug: exit 2 with one line. --payload and --compare say it for their
    own file where they read it (serialization.harness.too_deep)."""
    from celerydiag.serialization.harness import H_TOO_DEEP, too_deep

    try:
        yield
    except RecursionError:
        raise InputError(too_deep("a payload"), H_TOO_DEEP) from None


def _target(app: str | None, broker: str | None, backend: str | None, need: bool) -> Any:
    """The target the user named, if any; --from-backend needs one."""
    target = named_target(app, broker, backend)
    if target is None and need:
        raise InputError("--from-backend needs the result backend to read from",
                         "pass --backend redis://host:6379/0 (or --app proj.celery:app)")
    return target


def _serializers(requested: tuple[str, ...]) -> list[str]:
    from celerydiag.serialization.harness import known_serializers

    known = known_serializers()
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise InputError(f"unknown serializer {unknown[0]!r}",
                         f"choose from: {', '.join(known)} (or pass --app so your registration is imported)")
    return list(dict.fromkeys(requested)) or list(known)


def _write(doc: dict[str, Any], fmt: OutputFormat, stream: TextIO, color: bool) -> None:
    if fmt is OutputFormat.JSON:
        json.dump(doc, stream, indent=2, ensure_ascii=False, allow_nan=False)
        stream.write("\n")
    else:
        render_text(doc, stream, color=color)


def render_text(doc: dict[str, Any], stream: TextIO, color: bool = False) -> None:
    """The table (payload x serializer), the before/after table, the recommendation and the
    configuration of each serializer it names."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from celerydiag.serialization.harness import UNSTABLE_SPREAD, human_size

    console = Console(file=stream, force_terminal=color, no_color=not color, width=130, highlight=False)
    model = doc["backend_model"]
    console.print(verdict(doc), markup=False)
    table = Table(title="Serializer cost per payload (median per call; ± relative spread)")
    for col, just in (("payload", "left"), ("serializer", "left"), ("encode ms", "right"),
                      ("decode ms", "right"), ("size", "right"), (f"per update on {model['backend']} ms", "right"),
                      ("peak mem", "right"), ("note", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    previous = None
    skipped = _skipped_payloads(doc["results"])
    for r in doc["results"]:
        if r["payload"] in skipped:
            if r["payload"] != previous:  # one row for the payload, not an error row per serializer
                table.add_row(r["payload"], "all", "-", "-", "-", "-", "-",
                              f"[yellow]skipped: {escape(skipped[r['payload']])}[/]")
            previous = r["payload"]
            continue
        label = r["payload"] if r["payload"] != previous else ""
        previous = r["payload"]
        if r["error"]:
            # the whole reason, wrapped in its cell (never cut: the end says what failed)
            table.add_row(label, r["serializer"], "-", "-", "-", "-", "-", f"[red]cannot: {escape(r['error'])}[/]")
            continue
        table.add_row(label, r["serializer"], _ms(r["encode_ms"]), _ms(r["decode_ms"]), human_size(r["size_bytes"]),
                      f"{r['update_ms']:.3f}", human_size(r["peak_memory_bytes"]), r["note"] or "")
    console.print(table)
    console.print(f"[dim]Per update on {model['backend']}: " + "; ".join(model["steps"])
                  + f"; network at {model['bandwidth_bytes_per_s'] * 8 / 1e6:g} Mbit/s.[/]")
    arrays = _default_vs_fastest(doc, DEFAULT_SERIALIZER)
    if arrays is not None:
        console.print(arrays)
    if doc.get("compare"):
        console.print(_compare_table(doc["compare"]))
    if doc["unstable"]:
        console.print(f"[yellow]WARNING: {len(doc['unstable'])} timing(s) spread ≥ {UNSTABLE_SPREAD:.0%} "
                      f"(the machine is busy): {', '.join(doc['unstable'][:4])}. Rerun without --quick on a "
                      f"quiet machine (`python -m pyperf system tune` helps).[/]")
    console.print("\n[bold]Recommendation[/]")
    for i, line in enumerate(doc["recommendation"]):
        console.print(("  " if i == 0 else "  - ") + line, markup=False)
    for name in doc["suggested"]:
        info = doc["serializers"][name]
        console.print(f"\n[bold]{name}[/] in your celeryconfig (every worker and client imports it):")
        console.print(info["config"], markup=False, highlight=False)
        if info["security"]:
            console.print(f"[yellow]{info['security']}[/]")


DEFAULT_SERIALIZER = "json"  # kombu's and Celery's default: what the usual advice compares against
NEGLIGIBLE_UPDATE_MS = 1.0  # below this per update, encoding is not what makes a state late


def verdict(doc: dict[str, Any]) -> str:
    """The answer first (issue 15): which payload costs most per update with the serializer in use,
    and what the fastest serializer that encodes it would cost; or that serialization is negligible."""
    current = doc["meta"].get("result_serializer") or DEFAULT_SERIALIZER
    backend = doc["backend_model"]["backend"]
    timed = [r for r in doc["results"] if r["error"] is None and r.get("update_ms") is not None]
    mine = [r for r in timed if r["serializer"] == current]
    if not mine:
        return f"Verdict: no payload could be timed with {current}; see the table."
    worst = max(mine, key=lambda r: r["update_ms"])
    if worst["update_ms"] < NEGLIGIBLE_UPDATE_MS:
        return (f"Verdict: serialization does not make states late: the costliest payload ({worst['payload']}) "
                f"takes {worst['update_ms']:.3g} ms per update on {backend} with {current}.")
    fastest = min((r for r in timed if r["payload"] == worst["payload"]), key=lambda r: r["update_ms"])
    better = ("" if fastest["serializer"] == current else
              f"; {fastest['serializer']} takes {fastest['update_ms']:.3g} ms")
    return (f"Verdict: {worst['payload']} costs {worst['update_ms']:.3g} ms per update on {backend} with "
            f"{current} (the serializer in use){better}. Next: keep update_state meta small, or switch "
            "(Recommendation below).")


def _skipped_payloads(results: list[dict[str, Any]]) -> dict[str, str]:
    """Payloads no serializer ran because the payload itself could not be built (NumPy missing):
    the payload -> the one reason, said once instead of as an error per serializer."""
    from celerydiag.serialization.harness import NUMPY_MISSING

    by_payload: dict[str, set[bool]] = {}
    for r in results:
        by_payload.setdefault(r["payload"], set()).add(r["error"] == NUMPY_MISSING)
    return {p: NUMPY_MISSING for p, skipped in by_payload.items() if skipped == {True}}


def _default_vs_fastest(doc: dict[str, Any], default: str) -> Any:
    """The NumPy rows (1 MB, 10 MB) as the usual advice shows them: the default serializer next to
    the fastest one that encoded the array, per update."""
    from rich.table import Table

    rows = []
    for payload in dict.fromkeys(r["payload"] for r in doc["results"]):
        if not payload.startswith("ndarray-"):
            continue
        cases = [r for r in doc["results"] if r["payload"] == payload]
        ok = sorted((r for r in cases if r["update_ms"] is not None), key=lambda r: r["update_ms"])
        if not ok:
            continue
        mine = next((r for r in cases if r["serializer"] == default), None)
        best = ok[0]
        if mine is None or mine["update_ms"] is None:
            why = str(mine["error"]).split(":", 1)[0] if mine and mine["error"] else "not run"
            base = f"cannot encode it ({why})"
            gain = "-"
        else:
            base = f"{mine['update_ms']:.3f} ms"
            gain = f"x{mine['update_ms'] / best['update_ms']:.1f}" if best["update_ms"] else "-"
        rows.append((payload, base, best["serializer"], f"{best['update_ms']:.3f} ms", gain))
    if not rows:
        return None
    table = Table(title=f"NumPy arrays: {default} (the default) versus the fastest, per update")
    for col in ("payload", f"{default} per update", "fastest", "fastest per update", "faster by"):
        table.add_column(col, justify="left" if col in ("payload", "fastest") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _ms(timing: dict[str, Any] | None) -> str:
    if not timing:
        return "-"
    return f"{timing['median']:.3f} ±{timing['spread'] * 100:.0f}%"


def _compare_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    from celerydiag.serialization.harness import human_size

    table = Table(title="Before / after (ratio < 1 is faster; ~ means within the noise)")
    for col in ("payload", "serializer", "encode before → after", "decode before → after", "size before → after"):
        table.add_column(col)

    def cell(c: dict[str, Any] | None) -> str:
        if not c:
            return "-"
        mark = "" if c["significant"] else " ~"
        return f"{c['before']:.3f} → {c['after']:.3f} ms (x{c['ratio']:.2f}{mark})"

    for r in rows:
        size = r["size_bytes"]
        table.add_row(r["payload"], r["serializer"], cell(r["encode_ms"]), cell(r["decode_ms"]),
                      f"{human_size(size['before'])} → {human_size(size['after'])}")
    return table
