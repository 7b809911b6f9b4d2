"""Shared test plumbing: command-line flags, the golden-file helper, the CLI runner, and checkers
of the JSON contract that every test of a report can reuse.

Flags:
  --update-golden   rewrite tests/fixtures/render/* from the current renderers (review the diff!)
  --no-services     deselect every test marked ``integration`` (a machine without the services;
                    the default is to run them and FAIL when a service is down, never to skip)

Fixtures (use them by name in any test):
  golden(name, text)            compare ``text`` with tests/fixtures/render/<name>, or rewrite it
  raise_internal_errors         autouse: a bug inside an in-process probe fails the test with its
                                traceback instead of becoming a quiet ``failed`` probe. A test of
                                the guard itself sets ``celerydiag.probe._on_internal_error``
                                back to a no-op with monkeypatch.
  cli_argv                      the argv prefix of the real console script, for Popen
  run_cli(*args, ...)           run the real ``celerydiag`` console script in a subprocess with a
                                bounded timeout and a clean environment; returns CompletedProcess
  check_report(doc)             assert ``doc`` has the ``celerydiag.report/2`` shape of design.md (or /1)
  evidence_unit_problems(ev)    list of evidence keys whose numbers carry no unit suffix
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
GOLDEN_DIR = FIXTURES / "render"
APPS_DIR = FIXTURES / "apps"
REPORTS_DIR = FIXTURES / "reports"
REPO = TESTS.parent
# The console script beside the interpreter running the tests (the venv's), else `-m celerydiag`.
_SCRIPT = Path(sys.executable).with_name("celerydiag")
CLI: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "celerydiag"]
# Environment variables that would change which target a subprocess measures.
TARGET_ENV = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERYDIAG_TRACEBACK", "NO_COLOR")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("celerydiag")
    group.addoption("--update-golden", action="store_true",
                    help="rewrite the golden files under tests/fixtures/render/ instead of comparing")
    group.addoption("--no-services", action="store_true",
                    help="deselect tests marked integration (they need RabbitMQ, Redis, PostgreSQL, MariaDB)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--no-services"):
        return
    kept = [item for item in items if item.get_closest_marker("integration") is None]
    deselected = [item for item in items if item.get_closest_marker("integration") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``golden("full.markdown", text)``: equal to the stored file, or rewrite it with --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"no golden file {path}; create it with pytest --update-golden"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, (f"{name} differs from its golden file; if the change is intended, "
                                  "rerun with --update-golden and review the diff")

    return check


@pytest.fixture(autouse=True)
def raise_internal_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlfluff's switch: in tests a crashing probe is a test failure, not a quiet failed probe."""
    import celerydiag.probe as probes

    def reraise(probe: Any, exc: Exception) -> None:
        raise exc

    monkeypatch.setattr(probes, "_on_internal_error", reraise)


@pytest.fixture(autouse=True, scope="session")
def database_backends_own_their_sessions() -> Any:
    """Celery 5.3/5.4 only: make each DatabaseBackend use a SessionManager of its own, as 5.5+ do.

    Before 5.5 every DatabaseBackend of a process shares one manager (``ResultSession``'s default
    argument), whose "tables created" flag is set by the first backend: in a test process that has
    already used one, a later test's backend on another database or schema never creates its
    tables ("relation celery_taskmeta does not exist"). A worker or a user's process has one
    backend, so this is the test process's problem only; celerydiag's own scratch backends
    already bring their own manager (celerydiag.compat.own_session_manager)."""
    from celerydiag.compat import celery_version, own_session_manager

    if celery_version() >= (5, 5):
        yield
        return
    from celery.backends.database import DatabaseBackend

    shared = DatabaseBackend.ResultSession

    def result_session(self: Any, session_manager: Any = None) -> Any:
        return shared(self, session_manager or own_session_manager(self))

    DatabaseBackend.ResultSession = result_session
    try:
        yield
    finally:
        DatabaseBackend.ResultSession = shared


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TARGET_ENV}
    env.update(extra)
    return env


@pytest.fixture
def cli_argv() -> list[str]:
    """The argv prefix that runs the real console script (for Popen, signals, timing)."""
    return list(CLI)


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli("doctor", "--static", cwd=APPS_DIR, timeout=60, env={...})`` → CompletedProcess.

    ``env`` entries are added to a copy of os.environ without the CELERY_* target variables, so
    a developer's shell cannot change what the test measures.
    """

    def run(*args: str, cwd: Path | str | None = None, timeout: float = 120,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], cwd=cwd, env=clean_env(**dict(env or {})),
                              capture_output=True, text=True, timeout=timeout)

    return run


# ---- the celerydiag.report/2 contract, and /1 still read (design.md "JSON contracts") -----------

SEVERITIES = {"critical", "warning", "info", "ok"}
KINDS = ["measured", "modelled", "hazard"]  # in ranking order
CAUSES = {"broker", "backend", "network", "serialization", "polling", "config", "host", "e2e"}
STATUSES = {"ran", "skipped", "failed"}
SOURCES = {"app", "flags", "env", "embedded", "merged"}
UNITS = ("_ms", "_s", "_bytes", "_count", "_ratio")
# Keys of measure.Summary.to_dict(): a percentile summary is evidence as it stands.
PLAIN_KEYS = {"samples"}


def _typed(doc: Mapping[str, Any], key: str, types: Any, where: str) -> Any:
    assert key in doc, f"{where}: missing key {key!r}"
    value = doc[key]
    assert isinstance(value, types), f"{where}.{key}: {type(value).__name__} is not {types}"
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_report_document(doc: Any) -> None:
    """Assert the shape of a ``celerydiag.report/2`` document (or a saved ``/1`` one): required
    keys, types, closed sets, finite numbers, ranked findings. The reader other programs will
    write against."""
    assert isinstance(doc, dict), "a report is a JSON object"
    assert doc.get("schema") in ("celerydiag.report/2", "celerydiag.report/1"), doc.get("schema")
    v2 = doc["schema"] == "celerydiag.report/2"
    _typed(doc, "version", str, "report")
    meta = _typed(doc, "meta", dict, "report")
    for key in ("hostname", "created", "python", "celery", "kombu"):
        _typed(meta, key, str, "meta")
    target = _typed(doc, "target", dict, "report")
    for key in ("broker", "backend", "source"):
        _typed(target, key, str, "target")
    assert target["source"] in SOURCES, target["source"]
    budget = _typed(doc, "budget_ms", (int, float), "report")
    assert budget > 0
    for i, probe in enumerate(_typed(doc, "probes", list, "report")):
        where = f"probes[{i}]"
        assert isinstance(probe, dict), where
        _typed(probe, "name", str, where)
        assert _typed(probe, "status", str, where) in STATUSES, probe["status"]
        _typed(probe, "reason", str, where)
        assert _number(_typed(probe, "elapsed_s", (int, float), where)) and probe["elapsed_s"] >= 0
        if probe["status"] != "ran":
            assert probe["reason"], f"{where}: a {probe['status']} probe must say why"
    findings = _typed(doc, "findings", list, "report")
    for i, finding in enumerate(findings):
        check_finding_document(finding, f"findings[{i}]", v2=v2)
    if v2:  # design.md: measured before modelled at equal severity; a hazard below measured delays
        order = [(-min(_rank(f["severity"]), 1 if f["kind"] == "hazard" else 3), KINDS.index(f["kind"]),
                  -f["impact_ms"]) for f in findings]
        assert order == sorted(order), "findings must be sorted by severity (a hazard as info at most), kind, impact"
    else:
        order = [(-_rank(f["severity"]), -f["impact_ms"]) for f in findings]
        assert order == sorted(order), "findings must be sorted by severity, then impact_ms, descending"
    latency = _typed(doc, "latency", dict, "report")
    for key in ("observed_p50_ms", "observed_p99_ms"):
        assert key in latency, f"latency: missing {key}"
        assert latency[key] is None or _number(latency[key]), f"latency.{key}"
    by_cause = _typed(latency, "by_cause_ms", dict, "latency")
    for cause, value in by_cause.items():
        assert cause in CAUSES and _number(value), f"latency.by_cause_ms.{cause}"
    if v2 or "unreachable" in doc:  # side -> why; a probe failed for each dead side
        down = _typed(doc, "unreachable", dict, "report")
        assert set(down) <= {"broker", "backend"} and all(isinstance(v, str) and v for v in down.values()), down
        if down:
            assert any(p["status"] == "failed" for p in doc["probes"]), "a dead side fails the probes that need it"
    _assert_finite(doc, "report")


def check_finding_document(finding: Any, where: str = "finding", v2: bool = True) -> None:
    import re

    assert isinstance(finding, dict), where
    fid = _typed(finding, "id", str, where)
    assert re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9][a-z0-9-]*", fid), f"{where}.id {fid!r}"
    assert _typed(finding, "cause", str, where) in CAUSES
    assert _typed(finding, "severity", str, where) in SEVERITIES
    assert _typed(finding, "title", str, where), f"{where}: empty title"
    _typed(finding, "detail", str, where)
    assert _number(_typed(finding, "impact_ms", (int, float), where))
    evidence = _typed(finding, "evidence", dict, where)
    if v2:
        kind = _typed(finding, "kind", str, where)
        assert kind in KINDS, f"{where}.kind {kind!r}"
        _typed(finding, "by_impact", bool, where)
        assert "at_least" in finding and finding["at_least"] in SEVERITIES | {None}, f"{where}.at_least"
        ok_below = finding.get("ok_below_ratio", "missing")
        assert ok_below is None or (_number(ok_below) and 0 <= ok_below < 1), f"{where}.ok_below_ratio"
        if kind == "hazard":  # a worst case that may never happen: no P99 impact, never critical
            assert finding["impact_ms"] == 0 and "worst_case_ms" in evidence, where
            assert finding["severity"] != "critical", where
    problems = unit_problems(evidence)
    assert not problems, f"{where} ({fid}): evidence keys without a unit: {problems}"
    fix = finding.get("fix", "missing")
    assert fix != "missing", f"{where}: missing key 'fix'"
    if fix is not None:
        assert isinstance(fix, dict), f"{where}.fix"
        _typed(fix, "summary", str, f"{where}.fix")
        _typed(fix, "config", str, f"{where}.fix")
        docs = _typed(fix, "docs", list, f"{where}.fix")
        assert all(isinstance(d, str) for d in docs)


def _rank(severity: str) -> int:
    return ["ok", "info", "warning", "critical"].index(severity)


def _assert_finite(value: Any, where: str) -> None:
    if isinstance(value, float):
        assert math.isfinite(value), f"{where}: {value} is not strict JSON"
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _assert_finite(v, f"{where}[{i}]")


def unit_problems(evidence: Mapping[str, Any], parent_has_unit: bool = False) -> list[str]:
    """Evidence keys holding numbers without a unit (design.md: keys end in _ms, _s, _bytes,
    _count, _ratio). A mapping under a unit key (``{"publish_ms": {"p50": …}}``) passes its unit
    on to its numbers; text, booleans and ``samples`` are labels and need none."""
    problems = []
    for key, value in evidence.items():
        has_unit = parent_has_unit or str(key).endswith(UNITS)
        if isinstance(value, Mapping):
            problems += [f"{key}.{p}" for p in unit_problems(value, has_unit)]
        elif isinstance(value, (list, tuple)):
            if any(_number(v) for v in value) and not has_unit:
                problems.append(str(key))
        elif _number(value) and not has_unit and key not in PLAIN_KEYS:
            problems.append(str(key))
    return problems


@pytest.fixture
def check_report() -> Callable[[Any], None]:
    return check_report_document


@pytest.fixture(name="evidence_unit_problems")
def _evidence_unit_problems() -> Callable[[Mapping[str, Any]], list[str]]:
    return unit_problems
