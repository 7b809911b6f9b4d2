"""The serialization probe: what encoding and moving the state payload adds to every update.

It prefers the target's own recent metas (Redis: a bounded SCAN of ``celery-task-meta-*`` keys
read with STRLEN and GET; database backend: a bounded SELECT of recent ``result`` values from the
task table in a read-only session) and falls back to the standard payloads. It never writes.
Decoding a stored value goes through the target's own ``result_accept_content``, so we decode
nothing the user's clients would refuse.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celerydiag.access.backend import readonly_engine, redis_backend_client, task_table
from celerydiag.errors import DiagError, InputError, TargetUnreachable, describe, one_line
from celerydiag.findings import Cause, Finding, Fix, Severity, rated
from celerydiag.probe import Probe, ProbeContext
from celerydiag.serialization.harness import (
    DEFAULT_BANDWIDTH_BYTES_PER_S,
    MB,
    ONE_LINE_CHARS,
    SECURITY_PICKLE,
    BackendModel,
    HarnessConfig,
    Payload,
    Timing,
    backend_model,
    codec,
    custom_serializers,
    human_size,
    known_serializers,
    measure,
    pickle5_codec,
    standard_payload,
)
from celerydiag.target import Target

PROBE_SECONDS = 4.0  # the whole probe, reading included: doctor must stay quick
MAX_KEYS = 500  # stored metas whose size we look at
SCAN_CALLS = 20  # SCAN round trips at most
MAX_READ_BYTES = 16 * MB  # the largest single value we GET/SELECT and decode
PICKED = 1  # stored metas decoded and measured: the largest that decodes (the P99 stand-in)
MAX_DECODE_ATTEMPTS = 8
LARGE_META_BYTES = 64 * 1024  # above this a progress meta is carrying data, not progress
ALTERNATIVES = ("json", "msgpack", "orjson", "pickle5", "pickle")
DOCS = ("https://docs.celeryq.dev/en/stable/userguide/calling.html#serializers",
        "https://docs.celeryq.dev/en/stable/userguide/security.html#serializers")

FIX_SUMMARY = """\
# Every update_state() encodes the whole meta, sends it and decodes it again in each client.
# Report progress, not data:
#     self.update_state(state='PROGRESS', meta={'current': i, 'total': n})
# and keep arrays/tables in your own store (or return them once as the task result),
# putting only their id in the meta.
"""


@dataclass
class StoredMetas:
    """What we could see of the target's stored states: sizes of up to MAX_KEYS values and the
    largest one that decodes."""

    source: str
    sizes: list[int] = field(default_factory=list)
    samples: list[tuple[str, int, Any]] = field(default_factory=list)  # (task id, size, decoded)
    skipped: list[str] = field(default_factory=list)  # one line per value we could not use


class SerializationProbe(Probe):
    """Serialization: encode + decode + transfer cost of the state payload on every update.

    Reads a bounded sample of the target's stored metas (read-only: SCAN/STRLEN/GET on Redis, one
    SELECT in a read-only session on a database), else times the standard payloads under the
    target's result_serializer; a few seconds at most. Creates nothing.
    """

    name = "serialization"
    cause = Cause.SERIALIZATION

    def applies(self, target: Target) -> str | None:
        if target.backend_scheme in ("disabled", ""):
            return "no result backend: states are not stored, so nothing is serialized for them"
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        target, conf = ctx.target, ctx.target.conf
        deadline = time.monotonic() + min(PROBE_SECONDS, ctx.limits.max_seconds)
        serializer = conf.result_serializer or "json"
        model = backend_model(target.backend_scheme)
        bandwidth = float(ctx.options.get("bandwidth_bytes_per_s") or DEFAULT_BANDWIDTH_BYTES_PER_S)
        ctx.progress.start(self.name, total=3)
        ctx.progress.step(0, "reading stored metas")
        stored, problem = None, ""
        try:
            stored = read_stored_metas(ctx, model)
        except DiagError as exc:
            problem = exc.message
        ctx.progress.step(1, "timing encode/decode")
        with custom_serializers([serializer, *ALTERNATIVES]):
            from kombu.serialization import registry

            if serializer not in registry.name_to_type:  # known_serializers() also lists our optional ones
                raise DiagError(f"result_serializer {serializer!r} is not registered in kombu here",
                                "pass --app so your app's serializer registration is imported")
            if stored and stored.samples:
                yield from self._stored(ctx, stored, serializer, model, bandwidth, deadline)
            else:
                why = problem or (stored.skipped[0] if stored and stored.skipped else
                                  f"no stored metas found in the {model.name} backend"
                                  if stored else f"cannot read stored metas from a {model.name} backend")
                yield from self._standard(ctx, serializer, model, bandwidth, why)
        ctx.progress.step(2, "done")

    # ----------------------------------------------------------------- real metas

    def _stored(self, ctx: ProbeContext, stored: StoredMetas, serializer: str, model: BackendModel,
                bandwidth: float, deadline: float) -> Iterator[Finding]:
        task_id, size, value = max(stored.samples, key=lambda s: s[1])
        encode, decode = _codec_for(serializer, model)
        data = encode(value)
        enc, dec = _timed_pair(encode, decode, value, data)
        cost = model.cost(enc.median_ms, dec.median_ms, len(data), bandwidth)
        biggest = max(stored.sizes)
        scale = biggest / len(data) if biggest > MAX_READ_BYTES and data else 1.0
        impact = cost.total_ms * scale
        alternatives = {} if model.pickles_result else _alternatives(value, serializer, model, bandwidth,
                                                                     deadline)
        sizes = sorted(stored.sizes)
        evidence: dict[str, Any] = {
            "metas_count": len(sizes), "p50_bytes": int(statistics.median(sizes)), "max_bytes": biggest,
            "measured_bytes": len(data), "encode_ms": enc.median_ms, "decode_ms": cost.decode_ms,
            "transfer_ms": cost.transfer_ms, "wire_bytes": cost.wire_bytes, "update_ms": cost.total_ms,
            "encode_spread_ratio": enc.spread_ratio, "decode_spread_ratio": dec.spread_ratio,
            "assumed_bandwidth_bytes_per_s": bandwidth,
        }
        evidence.update({f"{name}_update_ms": ms for name, ms in alternatives.items()})
        codec_name = "pickle protocol 5 (PickleType column)" if model.pickles_result else serializer
        detail = (f"Read {len(sizes)} stored metas from the {stored.source} "
                  f"(median {human_size(evidence['p50_bytes'])}, largest {human_size(biggest)}). "
                  f"The largest we decoded, task {task_id} "
                  f"({human_size(len(data))} as {codec_name}), costs {enc.median_ms:.3f} ms to encode and "
                  f"{cost.decode_ms:.3f} ms to decode per update ({model.decodes} decode(s): "
                  f"{'; '.join(model.steps)}), plus {cost.transfer_ms:.3f} ms to move {human_size(cost.wire_bytes)}"
                  f" at an assumed {bandwidth * 8 / 1e9:g} Gbit/s.")
        if scale != 1.0:
            detail += f" The largest meta is over {human_size(MAX_READ_BYTES)}, so it was not read; its cost" \
                      f" is scaled linearly from the one measured (x{scale:.1f})."
        if enc.unstable or dec.unstable:
            detail += " Timings are noisy (spread >= 10 %): the machine is busy; rerun to confirm."
        if stored.skipped:
            detail += f" Not used: {len(stored.skipped)} value(s) ({stored.skipped[0]})."
        fix = _fix(biggest, serializer, alternatives, impact)
        yield self._finding("serialization.stored-meta", impact, ctx.budget_ms,
                            f"state payload costs {impact:.1f} ms per update (largest stored meta "
                            f"{human_size(biggest)}, {codec_name})", detail, evidence, fix)

    # ----------------------------------------------------------------- standard payloads

    def _standard(self, ctx: ProbeContext, serializer: str, model: BackendModel, bandwidth: float,
                  why: str) -> Iterator[Finding]:
        encode, decode = _codec_for(serializer, model)
        costs = {}
        for kind in ("progress-meta", "floats-10k"):
            value = standard_payload(kind).stored
            if model.name == "db":
                value = value["result"]  # the database backend encodes the result alone
            try:
                data = encode(value)
            except Exception as exc:
                raise DiagError(f"result_serializer {serializer!r} cannot encode a {kind} payload: "
                                f"{one_line(exc, ONE_LINE_CHARS)}") from None
            enc, dec = _timed_pair(encode, decode, value, data)
            costs[kind] = (model.cost(enc.median_ms, dec.median_ms, len(data), bandwidth), len(data))
        small, small_size = costs["progress-meta"]
        large, large_size = costs["floats-10k"]
        evidence = {"encode_ms": small.encode_ms, "decode_ms": small.decode_ms, "transfer_ms": small.transfer_ms,
                    "update_ms": small.total_ms, "payload_bytes": small_size,
                    "floats_10k_update_ms": large.total_ms, "floats_10k_bytes": large_size,
                    "assumed_bandwidth_bytes_per_s": bandwidth}
        detail = (f"Could not use real metas ({why}), so this times a standard small progress meta "
                  f"({small_size} bytes) with result_serializer {serializer!r} on the {model.name} backend: "
                  f"{small.total_ms:.3f} ms per update. A meta carrying 10,000 floats ({human_size(large_size)})"
                  f" would cost {large.total_ms:.2f} ms per update; `celerydiag bench-serialize` compares "
                  f"serializers on your own payload (--payload FILE, --from-backend TASK_ID).")
        fix = _fix(small_size, serializer, {}, small.total_ms)
        yield self._finding("serialization.standard-meta", small.total_ms, ctx.budget_ms,
                            f"a small progress meta costs {small.total_ms:.2f} ms per update ({serializer})",
                            detail, evidence, fix)

    @staticmethod
    def _finding(id: str, impact: float, budget_ms: float, title: str, detail: str,
                 evidence: dict[str, Any], fix: Fix | None) -> Finding:
        if impact < 0.01 * budget_ms and fix is None:
            return Finding(id, Cause.SERIALIZATION, Severity.OK, title, detail, impact, evidence)
        return rated(id, Cause.SERIALIZATION, impact, budget_ms, title, detail=detail, evidence=evidence,
                     fix=fix)


# --------------------------------------------------------------------------- cost helpers


def _codec_for(serializer: str, model: BackendModel) -> tuple[Any, Any]:
    return pickle5_codec() if model.pickles_result else codec(serializer)


def _timed_pair(encode: Any, decode: Any, value: Any, data: bytes) -> tuple[Timing, Timing]:
    config = HarnessConfig.probe()
    return measure(lambda: encode(value), config), measure(lambda: decode(data), config)


def _alternatives(value: Any, current: str, model: BackendModel, bandwidth: float,
                  deadline: float) -> dict[str, float]:
    """Per-update ms of the other serializers on the same value, while the time budget lasts."""
    found: dict[str, float] = {}
    for name in ALTERNATIVES:
        if name == current or name not in known_serializers() or time.monotonic() > deadline - 0.5:
            continue
        try:
            encode, decode = codec(name)
            data = encode(value)
            decode(data)
        except Exception:
            continue  # cannot encode this value (NumPy in json/msgpack) or not installed
        enc, dec = _timed_pair(encode, decode, value, data)
        found[name] = model.cost(enc.median_ms, dec.median_ms, len(data), bandwidth).total_ms
    return found


def _fix(size: int, serializer: str, alternatives: dict[str, float], impact: float) -> Fix | None:
    """One fix: shrink a meta that carries data; add the fastest serializer that encodes it when
    it beats the current one clearly (with the pickle caveat); else nothing to change."""
    specs = known_serializers()
    faster = sorted((ms, name) for name, ms in alternatives.items() if ms < 0.7 * impact)
    safe = [(ms, name) for ms, name in faster if not specs[name].pickle_family]
    if faster and safe and safe[0][0] <= 1.5 * faster[0][0]:
        faster = safe  # never trade code execution on decode for a few percent
    config = ""
    if size >= LARGE_META_BYTES:
        config = FIX_SUMMARY
        summary = f"send a summary in update_state meta, not the data ({human_size(size)} per update)"
        if faster:
            ms, name = faster[0]
            config += f"\n# If the data must travel with the state: {name} measured {ms:.1f} ms per update on it.\n"
            config += _serializer_config(specs[name])
            summary += f"; if it must travel, {name} costs {ms:.1f} ms instead of {impact:.1f} ms"
        return Fix(summary, config, DOCS)
    if faster and impact - faster[0][0] >= 1.0:
        ms, name = faster[0]
        return Fix(f"switch result_serializer from {serializer} to {name}: {ms:.1f} ms instead of "
                   f"{impact:.1f} ms per update", _serializer_config(specs[name]), DOCS)
    return None


def _serializer_config(spec: Any) -> str:
    text = spec.config()
    if spec.pickle_family:
        text = "# " + SECURITY_PICKLE + "\n" + text
    return text


# --------------------------------------------------------------------------- reading stored metas


def read_stored_metas(ctx: ProbeContext, model: BackendModel) -> StoredMetas | None:
    """The target's recent stored metas, read-only and bounded; None for backends we cannot read."""
    target, timeout = ctx.target, ctx.limits.timeout_s
    if model.name == "redis":
        client = redis_backend_client(target, timeout)
        ctx.cleanup.callback(client.close)
        return _read_redis(target, client)
    if model.name == "db":
        engine = readonly_engine(target, timeout)
        ctx.cleanup.callback(engine.dispose)
        return _read_database(target, engine, model)
    return None


def _read_redis(target: Target, client: Any) -> StoredMetas:
    backend = target.app.backend
    prefix = backend.task_keyprefix  # already carries global_keyprefix
    prefix = prefix if isinstance(prefix, bytes) else prefix.encode()
    pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", prefix) + b"*"
    stored = StoredMetas(source="Redis result backend")
    keys: list[bytes] = []
    try:
        cursor = 0
        for _ in range(SCAN_CALLS):
            cursor, batch = client.scan(cursor, match=pattern, count=200)
            keys.extend(batch)
            if not cursor or len(keys) >= MAX_KEYS:
                break
        keys = keys[:MAX_KEYS]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.strlen(key)
        lengths = pipe.execute(raise_on_error=False)
    except Exception as exc:
        raise TargetUnreachable(target.redact(f"cannot read stored metas from Redis: {describe(exc)}")) from None
    sized = [(k, n) for k, n in zip(keys, lengths) if isinstance(n, int) and n > 0]
    stored.sizes = [n for _, n in sized]
    for key, size in _pick(sized):
        if len(stored.samples) >= PICKED:
            break
        task_id = key[len(prefix):].decode(errors="replace")
        try:
            raw = client.get(key)
            if raw is None:
                continue  # expired between SCAN and GET
            stored.samples.append((task_id, size, backend.decode(raw)))
        except Exception as exc:  # ContentDisallowed: the user's clients would refuse it too
            stored.skipped.append(f"task {task_id}: {one_line(exc, ONE_LINE_CHARS)}")
    return stored


def _pick(sized: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
    """Values to try, best first: the largest we may read, the median (what a typical update
    carries), then the rest from large to small, at most MAX_DECODE_ATTEMPTS. Readers stop at
    PICKED decoded samples; the later candidates stand in for metas that do not decode (written
    before a result_serializer change, or in a format the user's clients refuse)."""
    readable = sorted((p for p in sized if p[1] <= MAX_READ_BYTES), key=lambda p: p[1])
    if not readable:
        return []
    order = [readable[-1], readable[len(readable) // 2], *reversed(readable[:-1])]
    return list(dict.fromkeys(order))[:MAX_DECODE_ATTEMPTS]


def _read_database(target: Target, engine: Any, model: BackendModel, limit: int = MAX_KEYS) -> StoredMetas:
    from sqlalchemy import func, select

    table = task_table(target.conf)
    stored = StoredMetas(source=f"database table {table.fullname}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(table.c.id, table.c.task_id, func.length(table.c.result))
                                .order_by(table.c.id.desc()).limit(limit)).all()
            sized = [((row[0], row[1]), int(row[2])) for row in rows if row[2]]
            stored.sizes = [n for _, n in sized]
            for (row_id, task_id), size in _pick(sized):
                if len(stored.samples) >= PICKED:
                    break
                raw = conn.execute(select(table.c.result).where(table.c.id == row_id)).scalar()
                try:
                    stored.samples.append((task_id, size, decode_result_column(target, bytes(raw), model)))
                except Exception as exc:
                    stored.skipped.append(f"task {task_id}: {one_line(exc, ONE_LINE_CHARS)}")
            conn.rollback()
    except Exception as exc:
        if _missing_table(exc, table):
            stored.skipped.append(f"no task table {table.fullname} yet")
            return stored
        raise TargetUnreachable(target.redact(f"cannot read {table.fullname}: {describe(exc)}")) from None
    return stored


def _missing_table(exc: Exception, table: Any) -> bool:
    """The task table is missing: the error names it. PostgreSQL's 'role "x" does not exist' and
    'database "x" does not exist' are login failures (the target is unreachable), not this."""
    text = describe(exc).lower()
    return table.name.lower() in text and any(
        s in text for s in ("does not exist", "doesn't exist", "no such table"))


def decode_result_column(target: Target, raw: bytes, model: BackendModel) -> Any:
    """Decode a ``result`` value the way the installed Celery's database backend reads it, but
    never unpickle what the user's own clients would not: a pre-5.7 PickleType column (their
    clients unpickle it anyway) or pickle in their accept list."""
    import pickle

    from kombu.serialization import loads, prepare_accept_content

    conf = target.conf
    accept = prepare_accept_content(conf.result_accept_content or conf.accept_content)
    if model.pickles_result:
        return pickle.loads(raw)
    serializer = conf.result_serializer or "json"
    from kombu.serialization import registry

    ctype, cenc, _ = registry._encoders[serializer]
    try:
        return loads(raw, ctype, cenc, accept=accept)
    except Exception:
        if raw[:1] == b"\x80" and "application/x-python-serialize" in (accept or ()):
            return pickle.loads(raw)  # a row written before Celery 5.7 (PickleType)
        raise


def read_task_meta(target: Target, task_id: str, timeout_s: float, max_bytes: int) -> Payload:
    """One stored meta for ``bench-serialize --from-backend``: Celery's own ``get_task_meta`` on
    key-value backends; for the database backend a read-only SELECT (Celery's backend would
    create or alter tables on first use, which we never do on a user's database)."""
    model = backend_model(target.backend_scheme)
    name = f"backend:{task_id}"
    if model.name == "rpc" or target.backend_scheme in ("disabled", ""):
        raise InputError(f"--from-backend needs a backend that stores results; {target.backend_scheme}:// "
                         "does not", "pass --backend redis://... or --app with your result backend")
    if model.name == "db":
        return _read_database_task(target, task_id, timeout_s, max_bytes, model)
    backend = target.app.backend
    if model.name == "redis":
        client = redis_backend_client(target, timeout_s)
        try:
            size = client.strlen(backend.get_key_for_task(task_id))
        except Exception as exc:
            raise TargetUnreachable(target.redact(f"cannot read from Redis: {describe(exc)}")) from None
        finally:
            client.close()
        if size > max_bytes:
            raise InputError(f"stored meta of task {task_id} is {size:,} bytes, above --max-size {max_bytes:,}")
        backend.connparams.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        meta = backend.get_task_meta(task_id)
    except Exception as exc:
        raise TargetUnreachable(target.redact(f"cannot read task {task_id}: {describe(exc)}")) from None
    if meta.get("status") == "PENDING" and meta.get("result") is None:
        raise InputError(f"no stored state for task {task_id} in the result backend",
                         "check the id; results expire after result_expires (default 1 day) or when forgotten")
    meta = dict(meta)
    if isinstance(meta.get("result"), BaseException):  # get_task_meta rebuilt the exception
        meta["result"] = backend.prepare_exception(meta["result"])
    meta.setdefault("task_id", task_id)
    return Payload(name, f"stored meta of task {task_id} ({meta.get('status')})", meta)


def _read_database_task(target: Target, task_id: str, timeout_s: float, max_bytes: int,
                        model: BackendModel) -> Payload:
    from sqlalchemy import func, select

    table = task_table(target.conf)
    engine = readonly_engine(target, timeout_s)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(table.c.id, table.c.status, func.length(table.c.result))
                               .where(table.c.task_id == task_id)).first()
            if row is None or not row[2]:
                raise InputError(f"no stored result for task {task_id} in {table.fullname}")
            if row[2] > max_bytes:
                raise InputError(f"stored result of task {task_id} is {row[2]:,} bytes, above --max-size {max_bytes:,}")
            raw = conn.execute(select(table.c.result).where(table.c.id == row[0])).scalar()
            conn.rollback()
    except DiagError:
        raise
    except Exception as exc:
        if _missing_table(exc, table):
            raise InputError(f"no task table {table.fullname} in the result backend's database",
                             "nothing stored there yet, or your app sets database_table_names/"
                             "database_table_schemas: pass --app so they are read") from None
        raise TargetUnreachable(target.redact(f"cannot read {table.fullname}: {describe(exc)}")) from None
    finally:
        engine.dispose()
    try:
        value = decode_result_column(target, bytes(raw), model)
    except Exception as exc:
        raise InputError(f"cannot decode the stored result of task {task_id}: "
                         f"{one_line(exc, ONE_LINE_CHARS)}") from None
    return Payload(f"backend:{task_id}", f"stored result of task {task_id} ({row[1]})", value)
