"""The timing harness, the payloads, the serializer registry handling and the cost model.

No services. Calibration is checked with a fake clock (pyperf's test_runner habit), so the loop
arithmetic is exact; the real encodes are checked for what they produce, never for how fast.
"""

from __future__ import annotations

import ast
import json
import pickle

import pytest

from celerydiag.serialization import harness as ser


class FakeClock:
    """A clock that only moves when the timed function says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costs(self, seconds: float):  # noqa: ANN201 - a tiny test helper
        def fn() -> None:
            self.now += seconds
        return fn


def test_calibration_sizes_loops_to_min_time_and_reports_per_call_ms() -> None:
    clock = FakeClock()
    config = ser.HarnessConfig(min_time_s=0.01, runs=5, warmups=1, max_case_s=10)
    timing = ser.measure(clock.costs(0.0001), config, clock=clock)  # 0.1 ms per call
    assert timing.loops * 0.0001 >= 0.01 - 1e-12  # one value lasts at least min_time
    assert timing.loops < 2 * 0.01 / 0.0001 * 1.1  # and not wildly more
    assert len(timing.values_ms) == 5 and timing.warmups == 1
    assert timing.median_ms == pytest.approx(0.1)
    assert timing.spread_ratio == pytest.approx(0.0, abs=1e-9)
    assert not timing.unstable


def test_a_slow_call_gets_fewer_values_within_the_case_budget_but_never_below_min_runs() -> None:
    clock = FakeClock()
    config = ser.HarnessConfig(min_time_s=0.01, runs=5, warmups=1, max_case_s=1.0, min_runs=3)
    timing = ser.measure(clock.costs(0.4), config, clock=clock)
    assert timing.loops == 1
    assert len(timing.values_ms) == 3  # the budget affords ~1.5 more values; min_runs wins
    assert timing.warmups == 0  # no room for a warm-up: the calibration call warmed it
    assert timing.median_ms == pytest.approx(400.0)


def test_spread_is_relative_stdev_and_flags_noise_at_ten_percent() -> None:
    steady = ser.Timing((1.0, 1.0, 1.0), loops=1, warmups=1)
    noisy = ser.Timing((1.0, 1.5, 0.6), loops=1, warmups=1)
    assert steady.spread_ratio == 0 and not steady.unstable
    assert noisy.spread_ratio == pytest.approx(0.4509 / (3.1 / 3), abs=1e-3) and noisy.unstable  # stdev / mean
    assert noisy.to_dict() == {"median": 1.0, "spread": round(noisy.spread_ratio, 4), "runs": 3, "loops": 1}


def test_peak_memory_sees_a_large_allocation() -> None:
    peak = ser.peak_memory_bytes(lambda: bytearray(4 * ser.MB))
    assert peak >= 4 * ser.MB


def test_standard_payloads_are_deterministic_and_sized_as_named() -> None:
    np = pytest.importorskip("numpy")
    a, b = ser.standard_payload("floats-10k"), ser.standard_payload("floats-10k")
    assert json.dumps(a.stored) == json.dumps(b.stored)
    assert len(a.stored["result"]["values"]) == 10_000
    for kind, size in (("ndarray-1mb", ser.MB), ("ndarray-10mb", 10 * ser.MB)):
        array = ser.standard_payload(kind).stored["result"]["array"]
        assert isinstance(array, np.ndarray) and array.nbytes == size
    frame = ser.standard_payload("dataframe-columns").stored["result"]["columns"]
    assert len({len(col) for col in frame.values()}) == 1  # columns of equal length
    meta = ser.standard_payload("progress-meta").stored
    assert set(meta) == {"status", "result", "traceback", "children", "date_done", "task_id"}
    with pytest.raises(ValueError):
        ser.standard_payload("nope")


def test_numpy_in_json_and_msgpack_is_an_error_row_and_pickle_round_trips() -> None:
    pytest.importorskip("numpy")
    payload = ser.standard_payload("ndarray-1mb")
    quick = ser.HarnessConfig.quick()
    bad = ser.run_case(payload, "json", quick)
    assert bad.encode is None and "not JSON serializable" in bad.error
    assert "ndarray" in ser.run_case(payload, "msgpack", quick).error
    good = ser.run_case(payload, "pickle", quick, with_memory=False)
    assert good.error is None and good.size_bytes > ser.MB and good.encode.median_ms > 0


def test_orjson_says_arrays_come_back_as_lists() -> None:
    pytest.importorskip("orjson")
    pytest.importorskip("numpy")
    with ser.custom_serializers(["orjson"]):
        result = ser.run_case(ser.standard_payload("ndarray-1mb"), "orjson", ser.HarnessConfig.quick(),
                              with_memory=False)
    assert result.error is None and "nested lists" in result.note


def test_custom_serializers_are_unregistered_after_the_block_and_user_ones_left_alone() -> None:
    from kombu.serialization import registry, unregister

    assert "pickle5" not in registry.name_to_type
    with ser.custom_serializers(["pickle5", "json"]):
        assert registry.name_to_type["pickle5"] == "application/x-python-serialize-p5"
        encode, decode = ser.codec("pickle5")
        assert decode(encode({"a": 1})) == {"a": 1}
    assert "pickle5" not in registry.name_to_type
    assert registry.name_to_type["pickle"] == "application/x-python-serialize"  # not shadowed

    registry.register("pickle5", pickle.dumps, pickle.loads, "application/x-user-p5", "binary")
    try:
        with ser.custom_serializers(["pickle5"]):
            assert registry.name_to_type["pickle5"] == "application/x-user-p5"
        assert registry.name_to_type["pickle5"] == "application/x-user-p5"  # theirs survives
    finally:
        unregister("pickle5")


def _assigned_names(code: str) -> set[str]:
    names = set()
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("name", sorted(set(ser.BUILTIN) | set(ser.CUSTOM)))
def test_every_serializer_config_is_pasteable_python_with_real_setting_names(name: str) -> None:
    from celery.app.defaults import SETTING_KEYS

    spec = ser.known_serializers()[name]
    code = spec.config()
    names = _assigned_names(code)
    assert names == {"result_serializer", "result_accept_content"}  # task messages untouched
    assert names <= SETTING_KEYS
    assert f"result_serializer = '{name}'" in code
    if name in ser.CUSTOM:
        assert "register(" in code and spec.content_type in code
    assert spec.pickle_family == (name in ("pickle", "pickle5"))


def test_the_pickle5_registration_we_print_is_the_one_from_the_reference() -> None:
    """celery-facts D: a custom content type, never the built-in pickle's (it would shadow it)."""
    assert "content_type='application/x-python-serialize-p5'" in ser.CUSTOM["pickle5"].registration
    assert "protocol=5" in ser.CUSTOM["pickle5"].registration


def test_backend_models_follow_the_code_paths() -> None:
    redis = ser.backend_model("redis")
    assert (redis.decodes, redis.wire_copies) == (2, 4)  # old meta decoded; SETEX+PUBLISH; GET old; client
    cost = redis.cost(encode_ms=1.0, decode_ms=2.0, size_bytes=125_000, bandwidth_bytes_per_s=125_000_000)
    assert cost.decode_ms == 4.0 and cost.wire_bytes == 500_000
    assert cost.transfer_ms == pytest.approx(4.0) and cost.total_ms == pytest.approx(9.0)
    assert ser.backend_model("rpc").wire_copies == 2
    db = ser.backend_model("db")
    assert db.pickles_result == ser.database_pickles_result()
    assert db.decodes == (2 if db.pickles_result else 1)


def test_recommendation_names_what_fails_and_what_works() -> None:
    pytest.importorskip("numpy")
    results = ser.run_bench([ser.standard_payload("ndarray-1mb"), ser.standard_payload("progress-meta")],
                            ["json", "pickle"], ser.HarnessConfig.quick())
    lines, suggested = ser.recommend(results, ser.backend_model("redis"))
    assert lines[0].startswith("Keep update_state meta small")
    array_line = next(line for line in lines if line.startswith("ndarray-1mb"))
    assert "cannot encode it: json" in array_line and "works: pickle" in array_line
    assert suggested == ["pickle"]


def test_small_payloads_keep_json() -> None:
    results = ser.run_bench([ser.standard_payload("progress-meta")], ["json", "pickle"],
                            ser.HarnessConfig.quick())
    lines, suggested = ser.recommend(results, ser.backend_model("redis"))
    assert lines[0].startswith("json is fine") and suggested == []


def test_bench_document_is_strict_json_with_the_contract_keys_and_compare_pairs_rows() -> None:
    payloads = [ser.standard_payload("progress-meta")]
    results = ser.run_bench(payloads, ["json", "msgpack"], ser.HarnessConfig.quick())
    doc = ser.bench_document(results, ser.backend_model("redis"), 125e6, payloads, {"host": "x"})
    text = json.dumps(doc, allow_nan=False)
    doc = json.loads(text)
    assert doc["schema"] == "celerydiag.bench-serialize/1"
    for row in doc["results"]:
        assert {"payload", "serializer", "encode_ms", "decode_ms", "size_bytes", "error"} <= set(row)
        assert set(row["encode_ms"]) >= {"median", "spread"} and row["error"] is None
        assert row["update_ms"] > 0
    # The comparison rule, on spreads fixed here (a loaded machine measures spreads past 25 %,
    # which would make even a 2x change noise): a change counts beyond twice the larger spread.
    for row in doc["results"]:
        row["encode_ms"]["spread"] = 0.05
    old = json.loads(json.dumps(doc))
    old["results"][0]["encode_ms"]["median"] *= 2
    rows = ser.compare_documents(old, doc)
    assert [(r["payload"], r["serializer"]) for r in rows] == [("progress-meta", "json"),
                                                               ("progress-meta", "msgpack")]
    assert rows[0]["encode_ms"]["ratio"] == pytest.approx(0.5, rel=1e-3)
    assert rows[0]["encode_ms"]["significant"] is True
    assert rows[1]["encode_ms"]["ratio"] == pytest.approx(1.0)
    assert rows[1]["encode_ms"]["significant"] is False


@pytest.mark.parametrize(("text", "expected"), [("64MB", 64 * ser.MB), ("500k", 500 * 1024),
                                                ("1048576", 1048576), ("1.5 mb", int(1.5 * ser.MB))])
def test_parse_size(text: str, expected: int) -> None:
    assert ser.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12 parsecs", "0", "-3MB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ser.parse_size(text)


def test_a_custom_serializer_keeps_its_registration_code_while_registered() -> None:
    with ser.custom_serializers(["pickle5"]):
        assert "register('pickle5'" in ser.known_serializers()["pickle5"].config()


def test_the_probe_fix_prefers_a_safe_serializer_unless_pickle_is_far_faster() -> None:
    from celerydiag.serialization.probe import _fix

    close = _fix(500_000, "json", {"pickle5": 18.2, "msgpack": 19.2}, 90.0)
    assert "'msgpack'" in close.config and "SECURITY" not in close.config
    far = _fix(500_000, "json", {"pickle5": 5.0, "msgpack": 19.2}, 90.0)
    assert "'pickle5'" in far.config and "SECURITY" in far.config and "register('pickle5'" in far.config
    small = _fix(300, "json", {"msgpack": 0.01}, 0.02)
    assert small is None  # nothing worth changing
    switch = _fix(300, "yaml", {"json": 0.05}, 2.0)  # small meta, slow serializer: switch only
    assert "update_state" not in switch.config and "result_serializer = 'json'" in switch.config
    from celery.app.defaults import SETTING_KEYS

    for fix in (close, far, switch):
        assert _assigned_names(fix.config) <= SETTING_KEYS
