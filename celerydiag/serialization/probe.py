"""The serialization probe: what encoding and moving the state payload adds to every update.

It prefers the target's own recent metas (Redis: a bounded SCAN of ``celery-task-meta-*`` keys
read with STRLEN and GET; database backend: a bounded SELECT of recent ``result`` values from the
task table in a read-only session) and falls back to the standard payloads. It never writes.
Decoding a stored value goes through the target's own ``result_accept_content``, so we decode
nothing the user's clients would refuse.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

from celerydiag.errors import DiagError, one_line
from celerydiag.findings import Cause, Finding, Fix, delay
from celerydiag.measure import Budget
from celerydiag.probe import Probe, ProbeContext
from celerydiag.serialization.harness import (
    DEFAULT_BANDWIDTH_BYTES_PER_S,
    ONE_LINE_CHARS,
    SECURITY_PICKLE,
    BackendModel,
    HarnessConfig,
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
from celerydiag.serialization.stored import MAX_READ_BYTES, StoredMetas, read_stored_metas
from celerydiag.target import Side

PROBE_SECONDS = 4.0  # the whole probe, reading included: doctor must stay quick
LARGE_META_BYTES = 64 * 1024  # above this a progress meta is carrying data, not progress
NEGLIGIBLE_RATIO = 0.01  # with nothing to fix, a cost under 1 % of the budget is ok
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


class SerializationProbe(Probe):
    """Serialization: encode + decode + transfer cost of the state payload on every update.

    Reads a bounded sample of the target's stored metas (read-only: SCAN/STRLEN/GET on Redis, one
    SELECT in a read-only session on a database), else times the standard payloads under the
    target's result_serializer; a few seconds at most. Creates nothing.
    """

    name = "serialization"
    cause = Cause.SERIALIZATION
    needs = frozenset({Side.BACKEND})  # reads stored metas

    def applies(self, ctx: ProbeContext) -> str | None:
        if ctx.target.backend_scheme in ("disabled", ""):
            return "no result backend: states are not stored, so nothing is serialized for them"
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        target, conf = ctx.target, ctx.target.conf
        deadline = time.monotonic() + min(PROBE_SECONDS, ctx.limits.max_seconds)
        serializer = conf.result_serializer or "json"
        model = backend_model(target.backend_scheme)
        bandwidth = ctx.options.bandwidth_bytes_per_s or DEFAULT_BANDWIDTH_BYTES_PER_S
        ctx.progress.start(self.name, total=3)
        ctx.progress.step(0, "reading stored metas")
        stored, problem = None, ""
        try:
            stored = read_stored_metas(ctx.target, ctx.limits.timeout_s, ctx.cleanup, model, budget=Budget.of(ctx))
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
        yield self._finding("serialization.stored-meta", impact,
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
        yield self._finding("serialization.standard-meta", small.total_ms,
                            f"a small progress meta costs {small.total_ms:.2f} ms per update ({serializer})",
                            detail, evidence, fix)

    @staticmethod
    def _finding(id: str, impact: float, title: str, detail: str,
                 evidence: dict[str, Any], fix: Fix | None) -> Finding:
        # with nothing to fix, a cost under 1 % of the budget is a check that passed
        return delay(id, Cause.SERIALIZATION, impact, title, detail=detail, evidence=evidence,
                     fix=fix, ok_below_ratio=NEGLIGIBLE_RATIO if fix is None else None)


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
