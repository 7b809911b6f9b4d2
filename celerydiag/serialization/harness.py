"""What encoding a task's state costs: the timing harness, the serializers, the payloads, and
the per-update cost model that the `bench-serialize` command and the serialization probe share.

Why a harness of our own and not pyperf: the probe runs inside `doctor` with a few seconds to
spare and must not spawn processes; the command must finish a full table in under a minute.
We keep pyperf's habits that make a number trustworthy (calibrate the loop count until one
value lasts ``min_time``, discard warm-ups, several values, median and relative spread, warn
when the spread says the machine is noisy) and `bench/serialize_vs_pyperf.py` checks that our
medians agree with pyperf's on the same encodes.

We time the calls Celery itself makes: ``kombu.serialization.dumps(meta, serializer=name)`` in
the worker and ``loads(payload, content_type, content_encoding, accept=...)`` in the client.
Custom serializers (pickle protocol 5, orjson with NumPy) are registered in kombu's registry
only for the duration of a ``custom_serializers()`` block, then unregistered, so nothing leaks.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from celerydiag.errors import one_line
from celerydiag.target import REDIS_SCHEMES

MAX_LOOPS = 2**20
UNSTABLE_SPREAD = 0.10  # pyperf warns when stdev >= 10 % of the mean
MB = 1024 * 1024
ONE_LINE_CHARS = 120  # of an error message: YAML's embeds the repr of a whole array
DEFAULT_BANDWIDTH_BYTES_PER_S = 125_000_000  # 1 Gbit/s, a LAN between worker, store and client
BENCH_SCHEMA = "celerydiag.bench-serialize/1"
# JSON history (celerydiag.bench-serialize/N): 1 = first release.

SECURITY_PICKLE = (
    "SECURITY: a pickle-family serializer in accept_content/result_accept_content lets anyone who can "
    "publish to the broker or write to the result store run code in your workers and clients "
    "(Celery security guide). Use it only when every producer and the store are trusted."
)


# --------------------------------------------------------------------------- the harness


@dataclass(frozen=True)
class HarnessConfig:
    """pyperf's knobs, scaled to an interactive tool: ``min_time_s`` per value, ``runs`` values
    after ``warmups`` discarded ones, and ``max_case_s`` so a slow encoder (YAML of 10 MB) cannot
    blow the run's time budget: it gets fewer values (never below ``min_runs``) and says so."""

    min_time_s: float = 0.04
    runs: int = 5
    warmups: int = 1
    max_case_s: float = 2.0
    min_runs: int = 3

    @classmethod
    def quick(cls) -> HarnessConfig:
        return cls(min_time_s=0.01, runs=3, warmups=1, max_case_s=0.6, min_runs=2)

    @classmethod
    def probe(cls) -> HarnessConfig:
        """Inside doctor: a few hundred ms per measured operation at most."""
        return cls(min_time_s=0.005, runs=3, warmups=1, max_case_s=0.4, min_runs=2)


@dataclass(frozen=True)
class Timing:
    """Per-operation milliseconds of each value (one value = ``loops`` calls)."""

    values_ms: tuple[float, ...]
    loops: int
    warmups: int

    @property
    def median_ms(self) -> float:
        return statistics.median(self.values_ms)

    @property
    def spread_ratio(self) -> float:
        """Relative standard deviation (stdev / mean), pyperf's stability measure."""
        if len(self.values_ms) < 2:
            return 0.0
        mean = statistics.fmean(self.values_ms)
        return statistics.stdev(self.values_ms) / mean if mean > 0 else 0.0

    @property
    def unstable(self) -> bool:
        return self.spread_ratio >= UNSTABLE_SPREAD

    def to_dict(self) -> dict[str, Any]:
        return {"median": round(self.median_ms, 6), "spread": round(self.spread_ratio, 4),
                "runs": len(self.values_ms), "loops": self.loops}


def measure(fn: Callable[[], Any], config: HarnessConfig = HarnessConfig(),
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``fn`` the pyperf way: double the loop count until one value takes ``min_time_s``
    (calibration also warms caches), run the warm-ups, then the values. Returns per-call ms."""
    started = clock()
    loops = 1
    while True:
        raw = _timed(fn, loops, clock)
        if raw >= config.min_time_s or loops >= MAX_LOOPS:
            break
        if raw <= 0:
            loops *= 2
        else:  # jump close to the target instead of doubling 20 times for a 1 µs call
            loops = min(MAX_LOOPS, max(loops * 2, int(loops * config.min_time_s / raw * 1.1)))
    per_value_s = max(raw, 1e-9)
    budget_left = config.max_case_s - (clock() - started)
    affordable = int(budget_left // per_value_s)
    warmups = min(config.warmups, max(0, affordable - config.min_runs))
    runs = max(config.min_runs, min(config.runs, affordable - warmups))
    for _ in range(warmups):
        _timed(fn, loops, clock)
    values = tuple(_timed(fn, loops, clock) * 1000.0 / loops for _ in range(runs))
    return Timing(values, loops, warmups)


def _timed(fn: Callable[[], Any], loops: int, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(loops):
        fn()
    return clock() - start


def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak Python allocation of one call (tracemalloc), outside the timed runs: tracing slows
    every allocation, so it must never be on while we time."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        if not was_tracing:
            tracemalloc.stop()


# --------------------------------------------------------------------------- serializers


@dataclass(frozen=True)
class SerializerSpec:
    """A serializer as a user configures it: the registration code they paste (empty for
    kombu's built-ins), the accept lines, and whether it executes code on decode."""

    name: str
    content_type: str
    registration: str = ""
    pickle_family: bool = False
    needs: str = ""  # the module it imports, for the "install it" message
    note: str = ""

    def config_lines(self) -> str:
        """Results only: workers (Redis decodes the old meta before each write) and clients both
        decode with result_accept_content, so accept_content (task messages) need not widen."""
        if self.name == "json":
            return "result_serializer = 'json'\nresult_accept_content = ['json']\n"
        return (f"result_serializer = '{self.name}'\n"
                f"result_accept_content = ['json', '{self.name}']  # workers and clients both decode results\n"
                "# accept_content (task messages) need not change. Deploy to workers and clients together:\n"
                "# Celery decodes a stored result with the configured result_serializer, so results stored\n"
                "# before the switch cannot be read after it (until they expire).\n")

    def config(self) -> str:
        """Pasteable into a celeryconfig module, which every worker and client imports."""
        head = self.registration + "\n" if self.registration else ""
        return head + self.config_lines()


_PICKLE5_CODE = """\
import pickle
from kombu.serialization import register

register('pickle5', lambda obj: pickle.dumps(obj, protocol=5), pickle.loads,
         content_type='application/x-python-serialize-p5', content_encoding='binary')
"""

_ORJSON_CODE = """\
import orjson
from kombu.serialization import register


def _orjson_dumps(obj):
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


register('orjson', _orjson_dumps, orjson.loads,
         content_type='application/x-orjson', content_encoding='utf-8')
"""

BUILTIN = {
    "json": SerializerSpec("json", "application/json", needs="",
                           note="kombu's default; no NumPy, no bytes without base64"),
    "pickle": SerializerSpec("pickle", "application/x-python-serialize", pickle_family=True,
                             note="kombu pickles with protocol 4 (PICKLE_PROTOCOL env var changes it)"),
    "msgpack": SerializerSpec("msgpack", "application/x-msgpack", needs="msgpack",
                              note="no NumPy, datetime or UUID"),
    "yaml": SerializerSpec("yaml", "application/x-yaml", needs="yaml",
                           note="safe_dump/safe_load; slow, pure Python"),
}
CUSTOM = {
    "pickle5": SerializerSpec("pickle5", "application/x-python-serialize-p5", _PICKLE5_CODE,
                              pickle_family=True, note="pickle protocol 5, registered by you"),
    "orjson": SerializerSpec("orjson", "application/x-orjson", _ORJSON_CODE, needs="orjson",
                             note="encodes NumPy arrays; they decode as nested lists"),
}
PICKLE_FAMILY = ("pickle", "python-serialize")


def known_serializers() -> dict[str, SerializerSpec]:
    """kombu's registered serializers (built-ins and entry points) plus our custom ones."""
    from kombu.serialization import registry

    specs: dict[str, SerializerSpec] = {}
    for name, ctype in registry.name_to_type.items():
        ours = CUSTOM.get(name)
        if ours is not None and ours.content_type == ctype:  # registered by us (or the same way)
            specs[name] = ours
            continue
        specs[name] = BUILTIN.get(name) or SerializerSpec(
            name, ctype, pickle_family=any(p in ctype for p in PICKLE_FAMILY),
            note="registered in kombu by an installed package")
    for name, spec in CUSTOM.items():
        specs.setdefault(name, spec)
    return specs


def missing_module(spec: SerializerSpec) -> str | None:
    """The pip command when the serializer's library cannot be imported, else None."""
    if not spec.needs:
        return None
    try:
        __import__(spec.needs)
    except ImportError:
        package = {"yaml": "pyyaml"}.get(spec.needs, spec.needs)
        return f"{spec.name} needs the {spec.needs} module: pip install {package}"
    return None


@contextlib.contextmanager
def custom_serializers(names: Iterable[str]) -> Iterator[None]:
    """Register the custom serializers among ``names`` in kombu's registry for this block only.
    A name the user's app already registered is left alone (we then measure theirs)."""
    from kombu.serialization import registry, unregister

    added: list[str] = []
    try:
        for name in names:
            spec = CUSTOM.get(name)
            if spec is None or name in registry.name_to_type or missing_module(spec):
                continue
            added.append(name)  # before exec: a half-done registration is still undone
            exec(compile(spec.registration, f"<celerydiag {name} registration>", "exec"), {})
        yield
    finally:
        for name in added:
            with contextlib.suppress(Exception):
                unregister(name)


def codec(name: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """The encode and decode calls Celery makes for ``result_serializer = name``."""
    from kombu.serialization import dumps, loads

    ctype, cenc, _ = _codec_types(name)
    accept = {ctype}

    def encode(obj: Any) -> bytes:
        return dumps(obj, serializer=name)[2]

    def decode(data: bytes) -> Any:
        return loads(data, ctype, cenc, accept=accept)

    return encode, decode


def _codec_types(name: str) -> tuple[str, str, Any]:
    from kombu.exceptions import SerializerNotInstalled
    from kombu.serialization import registry

    entry = registry._encoders.get(name)  # kombu keeps (content_type, encoding, fn) per name
    if entry is None:
        raise SerializerNotInstalled(f"No encoder installed for {name}")
    return entry


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Payload:
    """A state payload to encode. ``stored`` is what the backend encodes (the meta envelope
    Celery builds around ``update_state(meta=...)``, or a real stored value as read)."""

    name: str
    description: str
    stored: Any
    error: str | None = None


STANDARD_KINDS = ("progress-meta", "floats-10k", "ndarray-1mb", "ndarray-10mb", "dataframe-columns")


def envelope(meta: Any, state: str = "PROGRESS", task_id: str = "celerydiag-bench") -> dict[str, Any]:
    """The dict a key-value backend encodes for ``update_state(state, meta)`` (celery/backends/
    base.py ``_get_result_meta`` plus ``task_id``): we time what Celery really writes."""
    return {"status": state, "result": meta, "traceback": None, "children": [],
            "date_done": None, "task_id": task_id}


NUMPY_MISSING = "numpy is not installed: pip install numpy"  # a payload skipped, not a serializer's failure


def standard_payload(kind: str) -> Payload:
    """The standard payloads, deterministic (seeded) so two runs encode the same bytes."""
    import random

    rng = random.Random(0)
    if kind == "progress-meta":
        meta = {"current": 42, "total": 100, "percent": 42.0, "message": "processing batch 42 of 100",
                "eta_s": 12.5}
        return Payload(kind, "small progress dict (5 keys)", envelope(meta))
    if kind == "floats-10k":
        meta = {"current": 10_000, "total": 10_000, "values": [rng.random() for _ in range(10_000)]}
        return Payload(kind, "progress meta carrying a list of 10,000 floats", envelope(meta))
    if kind in ("ndarray-1mb", "ndarray-10mb"):
        size = MB if kind == "ndarray-1mb" else 10 * MB
        try:
            import numpy as np
        except ImportError:
            return Payload(kind, f"NumPy float64 array of {size // MB} MB", None, error=NUMPY_MISSING)
        array = np.random.default_rng(0).random(size // 8)
        return Payload(kind, f"meta with a NumPy float64 array of {size // MB} MB",
                       envelope({"current": 1, "total": 1, "array": array}))
    if kind == "dataframe-columns":
        rows = 5_000
        meta = {"columns": {
            "timestamp": [f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}" for i in range(rows)],
            "sensor": [f"sensor-{i % 17}" for i in range(rows)],
            "value": [rng.random() * 100 for _ in range(rows)],
            "count": [rng.randrange(1000) for _ in range(rows)],
        }}
        return Payload(kind, f"DataFrame-like dict of 4 columns x {rows:,} rows (df.to_dict('list'))",
                       envelope(meta))
    raise ValueError(f"unknown payload kind {kind!r}")


# --------------------------------------------------------------------------- one case


@dataclass(frozen=True)
class CaseResult:
    payload: str
    serializer: str
    encode: Timing | None = None
    decode: Timing | None = None
    size_bytes: int | None = None
    peak_memory_bytes: int | None = None
    error: str | None = None
    note: str | None = None

    @property
    def total_ms(self) -> float:
        if self.encode is None or self.decode is None:
            return math.inf
        return self.encode.median_ms + self.decode.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": self.payload,
            "serializer": self.serializer,
            "encode_ms": self.encode.to_dict() if self.encode else None,
            "decode_ms": self.decode.to_dict() if self.decode else None,
            "size_bytes": self.size_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "error": self.error,
            "note": self.note,
        }


def run_case(payload: Payload, serializer: str, config: HarnessConfig,
             with_memory: bool = True) -> CaseResult:
    """Encode and decode ``payload.stored`` with ``serializer`` through kombu, timed. A payload
    the serializer cannot encode gives a result with ``error`` (kombu's one line), not a raise."""
    if payload.error:
        return CaseResult(payload.name, serializer, error=payload.error)
    spec = known_serializers().get(serializer)
    missing = missing_module(spec) if spec else None
    if missing:
        return CaseResult(payload.name, serializer, error=missing)
    try:
        encode, decode = codec(serializer)
        data = encode(payload.stored)
        decoded = decode(data)
    except Exception as exc:  # EncodeError, SerializerNotInstalled, RepresenterError, ...
        return CaseResult(payload.name, serializer, error=one_line(exc, ONE_LINE_CHARS))
    enc = measure(lambda: encode(payload.stored), config)
    dec = measure(lambda: decode(data), config)
    peak = peak_memory_bytes(lambda: encode(payload.stored)) if with_memory else None
    return CaseResult(payload.name, serializer, enc, dec, len(data), peak,
                      note=_roundtrip_note(payload.stored, decoded))


def _roundtrip_note(original: Any, decoded: Any) -> str | None:
    """Say when the client gets back something else than the worker sent (arrays as lists)."""
    def has_array(obj: Any, depth: int = 0) -> bool:
        if type(obj).__module__ == "numpy" and hasattr(obj, "shape"):
            return True
        if depth < 4 and isinstance(obj, dict):
            return any(has_array(v, depth + 1) for v in obj.values())
        return False

    if has_array(original) and not has_array(decoded):
        return "NumPy arrays come back as nested lists"
    return None


# --------------------------------------------------------------------------- cost model


@dataclass(frozen=True)
class UpdateCost:
    """What one ``update_state`` costs on a backend, from the worker's call to a client holding
    the decoded state: codec time, and the bytes moved at an assumed bandwidth."""

    backend: str
    encode_ms: float
    decode_ms: float  # every decode on the path (the worker's read-before-write + the client's)
    wire_bytes: int
    bandwidth_bytes_per_s: float
    steps: tuple[str, ...] = field(default=())

    @property
    def transfer_ms(self) -> float:
        return self.wire_bytes / self.bandwidth_bytes_per_s * 1000.0

    @property
    def total_ms(self) -> float:
        return self.encode_ms + self.decode_ms + self.transfer_ms


@dataclass(frozen=True)
class BackendModel:
    """How many encodes, decodes and copies of the payload one update costs on a backend
    (read from Celery's code paths; see celery-facts A.1-A.3)."""

    name: str
    decodes: int
    wire_copies: int
    steps: tuple[str, ...]
    pickles_result: bool = False  # Celery < 5.7 database backend: PickleType whatever the serializer

    def cost(self, encode_ms: float, decode_ms: float, size_bytes: int,
             bandwidth_bytes_per_s: float = DEFAULT_BANDWIDTH_BYTES_PER_S) -> UpdateCost:
        return UpdateCost(self.name, encode_ms, decode_ms * self.decodes, size_bytes * self.wire_copies,
                          bandwidth_bytes_per_s, self.steps)


def backend_model(scheme: str) -> BackendModel:
    """The model for a backend scheme, checked against the installed Celery where it changed."""
    if scheme in REDIS_SCHEMES:
        return BackendModel("redis", decodes=2, wire_copies=4, steps=(
            "worker GET + decode of the old meta (skip-after-SUCCESS guard)",
            "worker encode", "SETEX + PUBLISH: the payload twice", "client GET/message + decode"))
    if scheme == "db":
        if database_pickles_result():
            return BackendModel("db", decodes=2, wire_copies=3, pickles_result=True, steps=(
                "worker SELECT unpickles the old result (PickleType)",
                "worker pickles the new result (protocol 5, whatever result_serializer says)",
                "UPDATE", "client SELECT + unpickle"))
        reads = 2 if database_locks_before_write() else 1
        return BackendModel("db", decodes=1, wire_copies=reads + 2, steps=(
            f"worker SELECT{' + SELECT FOR UPDATE' if reads == 2 else ''} (old row, not decoded)",
            "worker encode with result_serializer", "UPDATE", "client SELECT + decode"))
    if scheme == "rpc":
        return BackendModel("rpc", decodes=1, wire_copies=2, steps=(
            "worker encode", "publish to the broker", "broker delivers to the client's reply queue",
            "client decode"))
    return BackendModel(scheme or "unknown", decodes=1, wire_copies=2, steps=(
        "worker encode", "write", "client read + decode"))


def database_pickles_result() -> bool:
    """Celery < 5.7 stores ``result`` as SQLAlchemy PickleType (always pickle, protocol 5); 5.7
    stores the result_serializer's bytes in a LargeBinary column. Ask the installed model."""
    try:
        import sqlalchemy as sa
        from celery.backends.database.models import Task
    except ImportError:
        return False
    return isinstance(Task.__table__.c.result.type, sa.PickleType)


def database_locks_before_write() -> bool:
    """Celery 5.7 re-reads the row with SELECT ... FOR UPDATE before writing (one more copy)."""
    import inspect

    try:
        from celery.backends.database import DatabaseBackend
    except ImportError:
        return False
    query = getattr(DatabaseBackend, "_query_task", None)
    return query is not None and "for_update" in inspect.signature(query).parameters


def pickle5_codec() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """SQLAlchemy PickleType's default: protocol 5 (the old database backend's own step)."""
    return (lambda obj: pickle.dumps(obj, protocol=5)), pickle.loads


# --------------------------------------------------------------------------- user payloads


def load_payload_file(path: str, trust_pickle: bool, max_size_bytes: int) -> Payload:
    """A user's payload: JSON, or a pickle only with ``trust_pickle`` (unpickling runs whatever
    code the file holds). The size is checked before anything is read, so memory stays bounded."""
    from celerydiag.errors import InputError

    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise InputError(f"cannot read --payload {path}: {exc.strerror}") from None
    if size > max_size_bytes:
        raise InputError(f"--payload {path} is {size:,} bytes, above --max-size {max_size_bytes:,}",
                         "raise --max-size if you mean it (the benchmark holds several copies in memory)")
    with open(path, "rb") as stream:
        raw = stream.read(max_size_bytes + 1)
    name = f"file:{os.path.basename(path)}"
    if raw[:1] == b"\x80":  # every pickle of protocol 2 or later starts with PROTO
        if not trust_pickle:
            raise InputError(f"--payload {path} is a pickle; loading it would run any code it contains",
                             "pass --trust-pickle only for a file you made yourself, or save the meta as JSON")
        try:
            meta = pickle.loads(raw)
        except Exception as exc:
            raise InputError(f"--payload {path} is not a readable pickle: {one_line(exc, ONE_LINE_CHARS)}") from None
        return Payload(name, f"your pickle file ({size:,} bytes)", envelope(meta))
    import json

    try:
        meta = json.loads(raw.decode("utf-8-sig"))
    except RecursionError:
        raise InputError(too_deep(f"--payload {path}"), H_TOO_DEEP) from None
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"--payload {path} is neither JSON nor a pickle",
                         "give the meta you pass to update_state(meta=...) as a JSON file "
                         "(or a pickle with --trust-pickle)") from None
    return Payload(name, f"your JSON file ({size:,} bytes)", envelope(meta))


H_TOO_DEEP = ("Celery's json serializer refuses a meta nested that deep too (msgpack from 512 levels): "
              "flatten it")


def too_deep(what: str) -> str:
    """One line for an input whose lists and dicts nest deeper than Python's parsers recurse
    (json and pickle raise RecursionError near ``sys.getrecursionlimit()`` levels)."""
    return f"{what} nests too deep to read (lists/dicts about {sys.getrecursionlimit()} levels deep or more)"


def parse_size(text: str) -> int:
    """``64MB``, ``500k``, ``1048576`` -> bytes (binary units, what a user means by MB)."""
    units = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MB, "mb": MB, "mib": MB,
             "g": 1024 * MB, "gb": 1024 * MB, "gib": 1024 * MB}
    cleaned = text.strip().lower().replace("_", "")
    number = cleaned.rstrip("abgikm")
    unit = cleaned[len(number):]
    if unit not in units:
        raise ValueError(f"unknown unit {unit!r}")
    value = float(number) * units[unit]
    if not math.isfinite(value):  # nan, inf, 1e400: int() of it would be our OverflowError
        raise ValueError("must be a finite number")
    if value < 1:
        raise ValueError("must be at least 1 byte")
    return int(value)


# --------------------------------------------------------------------------- the whole bench


def run_bench(payloads: Iterable[Payload], serializers: Iterable[str], config: HarnessConfig,
              on_case: Callable[[str], None] = lambda label: None) -> list[CaseResult]:
    payloads, serializers = list(payloads), list(serializers)
    results = []
    with custom_serializers(serializers):
        for payload in payloads:
            for name in serializers:
                on_case(f"{payload.name} x {name}")
                results.append(run_case(payload, name, config))
    return results


def unstable_cases(results: Iterable[CaseResult]) -> list[str]:
    return [f"{r.payload} x {r.serializer}" for r in results
            if (r.encode and r.encode.unstable) or (r.decode and r.decode.unstable)]


def recommend(results: list[CaseResult], model: BackendModel,
              bandwidth_bytes_per_s: float = DEFAULT_BANDWIDTH_BYTES_PER_S,
              current: str = "json") -> tuple[list[str], list[str]]:
    """A headline and one line per payload (what fails, what works, what is fastest and safe),
    and the serializers those lines suggest, whose configuration the output then shows. A payload
    is heavy when the ``current`` serializer (the target's, else json) fails on it or it costs
    5 ms or more per update with it."""
    specs = known_serializers()
    lines: list[str] = []
    heavy = []
    suggested: dict[str, None] = {}
    for payload in dict.fromkeys(r.payload for r in results):
        rows = [r for r in results if r.payload == payload]
        def per_update(r: CaseResult) -> float:
            if r.encode is None or r.decode is None:  # a case that could not encode costs "never"
                return math.inf
            return model.cost(r.encode.median_ms, r.decode.median_ms, r.size_bytes or 0,
                              bandwidth_bytes_per_s).total_ms

        ok = sorted((r for r in rows if not r.error), key=per_update)
        failed = [r.serializer for r in rows if r.error]
        if rows and all(r.error == NUMPY_MISSING for r in rows):  # nothing was timed: no advice from it
            lines.append(f"{payload}: skipped ({NUMPY_MISSING})")
            continue
        if not ok:
            reason = rows[0].error if rows else "no serializer selected"
            lines.append(f"{payload}: nothing in this run could encode it ({reason})")
            heavy.append(payload)
            continue
        best = ok[0]
        safe = next((r for r in ok if not specs[r.serializer].pickle_family), None)
        mine = next((r for r in rows if r.serializer == current), best)
        mine_ms = math.inf if mine.error else per_update(mine)
        if mine_ms >= 5 or failed:
            heavy.append(payload)
        text = f"{payload}: fastest {best.serializer} ({per_update(best):.3g} ms per update on {model.name}: " \
               f"{best.total_ms:.3f} ms encode+decode, {human_size(best.size_bytes)})"
        suggested[best.serializer] = None
        if safe is not None and safe is not best:
            text += f"; fastest without pickle: {safe.serializer} ({per_update(safe):.3g} ms per update)"
            suggested[safe.serializer] = None
        if failed:
            text += f"; cannot encode it: {', '.join(failed)}; works: {', '.join(r.serializer for r in ok)}"
        if mine is not best and not mine.error:
            text += f"; with {current} (the current setting): {mine_ms:.3g} ms per update"
        lines.append(text)
    if heavy:
        risky = any(specs[n].pickle_family for n in suggested)
        head = (f"Keep update_state meta small: {', '.join(heavy)} cost milliseconds (or fail) on every "
                f"update. Send a summary (counts, percent, an id of data kept in your own store); if the "
                f"data must travel, pick the fastest serializer that encodes it (configuration below"
                f"{'; read the SECURITY note before any pickle' if risky else ''}).")
    else:
        head = (f"{current} is fine for these payloads: every update costs under 5 ms with it; "
                f"keep result_serializer = '{current}'.")
    if not heavy:
        suggested = {}
    return [head, *lines], [n for n in suggested if n != current]


def bench_document(results: list[CaseResult], model: BackendModel, bandwidth_bytes_per_s: float,
                   payloads: Iterable[Payload], meta: dict[str, Any], current: str = "json") -> dict[str, Any]:
    """The JSON contract ``celerydiag.bench-serialize/1`` (results keyed by payload x serializer)."""
    specs = known_serializers()
    used = dict.fromkeys(r.serializer for r in results)
    rows = []
    for r in results:
        row = r.to_dict()
        if r.encode and r.decode and r.size_bytes is not None:
            cost = model.cost(r.encode.median_ms, r.decode.median_ms, r.size_bytes, bandwidth_bytes_per_s)
            row["update_ms"] = round(cost.total_ms, 6)
        else:
            row["update_ms"] = None
        rows.append(row)
    advice, suggested = recommend(results, model, bandwidth_bytes_per_s, current)
    doc: dict[str, Any] = {
        "schema": BENCH_SCHEMA,
        "meta": meta,
        "backend_model": {"backend": model.name, "decodes": model.decodes, "wire_copies": model.wire_copies,
                          "steps": list(model.steps), "bandwidth_bytes_per_s": bandwidth_bytes_per_s},
        "payloads": {p.name: p.description for p in payloads},
        "serializers": {n: {"content_type": specs[n].content_type, "config": specs[n].config(),
                            "security": SECURITY_PICKLE if specs[n].pickle_family else None,
                            "note": specs[n].note} for n in used if n in specs},
        "results": rows,
        "recommendation": advice,
        "suggested": suggested,
        "unstable": unstable_cases(results),
    }
    return doc


def compare_documents(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Before/after per payload x serializer present in both. A change smaller than twice the
    larger relative spread is marked as noise rather than claimed as a speed-up."""
    before = {(r["payload"], r["serializer"]): r for r in old.get("results", [])}
    rows = []
    for r in new["results"]:
        o = before.get((r["payload"], r["serializer"]))
        if o is None:
            continue
        row: dict[str, Any] = {"payload": r["payload"], "serializer": r["serializer"]}
        for key in ("encode_ms", "decode_ms"):
            a, b = o.get(key), r.get(key)
            if not a or not b or not a.get("median"):
                row[key] = None
                continue
            ratio = b["median"] / a["median"]
            noise = 2 * max(a.get("spread", 0.0), b.get("spread", 0.0))
            row[key] = {"before": a["median"], "after": b["median"], "ratio": round(ratio, 4),
                        "significant": abs(ratio - 1) > noise}
        row["size_bytes"] = {"before": o.get("size_bytes"), "after": r.get("size_bytes")}
        rows.append(row)
    return rows


def read_document(path: str) -> dict[str, Any]:
    import json

    from celerydiag.errors import InputError

    try:
        with open(path, encoding="utf-8") as stream:
            doc = json.load(stream)
    except OSError as exc:
        raise InputError(f"cannot read --compare {path}: {exc.strerror}") from None
    except RecursionError:
        raise InputError(too_deep(f"--compare {path}"),
                         "give the file an earlier `bench-serialize --format json -o FILE` wrote") from None
    except ValueError as exc:
        raise InputError(f"--compare {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != BENCH_SCHEMA:
        raise InputError(f"--compare {path} is not a {BENCH_SCHEMA} document",
                         "save one with: celerydiag bench-serialize --format json -o before.json")
    problem = _results_problem(doc.get("results", []))
    if problem:
        raise InputError(f"--compare {path} is not a readable {BENCH_SCHEMA} document: {problem}",
                         "save one with: celerydiag bench-serialize --format json -o before.json")
    return doc


def _results_problem(results: Any) -> str | None:
    """What in a saved document's ``results`` :func:`compare_documents` could not read, or None."""
    if not isinstance(results, list):
        return "results is not a list"
    for i, row in enumerate(results):
        if not isinstance(row, dict):
            return f"results[{i}] is not an object"
        for key in ("payload", "serializer"):
            if not isinstance(row.get(key), str):
                return f"results[{i}].{key} is missing or not a string"
        size = row.get("size_bytes")
        if size is not None and not _finite_number(size):
            return f"results[{i}].size_bytes is not a number"
        for key in ("encode_ms", "decode_ms"):
            problem = _timing_problem(row.get(key))
            if problem:
                return f"results[{i}].{key}{problem}"
    return None


def _timing_problem(timing: Any) -> str | None:
    if timing is None:
        return None
    if not isinstance(timing, dict):
        return " is not an object"
    for number in ("median", "spread"):
        if not _finite_number(timing.get(number, 0.0)):
            return f".{number} is not a finite number"
    return None


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("MB", MB), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
