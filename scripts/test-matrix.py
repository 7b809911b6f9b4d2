#!/usr/bin/env python3
"""``make test-matrix``: the probe-level tests on every Celery we claim, each in its own virtualenv.

Why a script of its own: ``make test`` proves one Celery (whatever pip resolves today, 5.7). The
pairs below prove 5.3 to 5.7 and Python 3.9 to 3.13, each at least once, against the same real
local services. Stdlib only, so it runs from any python3 on a clean clone.

For each pair: find the Python under ``$(pyenv root)/versions`` (absent: SKIPPED with the reason,
never silently), build ``.matrix/py<X.Y>-celery<A.B>`` once (rebuilt when pyproject.toml or the
pin changes), install celerydiag with ``celery~=A.B.0`` (the latest patch, with the kombu pip
resolves for it), run ``tests/unit`` plus :data:`INTEGRATION` and count the results from pytest's
JUnit XML. Prints one table and writes ``.matrix/last-run.json``, which
``scripts/matrix-table.py`` renders as the README's "Supported versions" table.

Exit status: 0 when every pair that ran passed and at least one ran; 1 otherwise.

    python3 scripts/test-matrix.py                 # every pair
    python3 scripts/test-matrix.py --only 5.3      # the pairs whose Celery (or Python) is 5.3
    python3 scripts/test-matrix.py --build-only    # build the venvs, run nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (celery, python): each Celery 5.3..5.7 once and each Python 3.9..3.13 once, oldest with oldest.
# Celery 5.7 needs Python >= 3.10 (on 3.9 pip resolves 5.6.3), and the oldest Celery on the oldest
# Python is the pair most likely to break; the diagonal gives both ends and one run per Celery.
PAIRS: list[tuple[str, str]] = [
    ("5.3", "3.9"),
    ("5.4", "3.10"),
    ("5.5", "3.11"),
    ("5.6", "3.12"),
    ("5.7", "3.13"),
]

# The integration tests that exercise every probe (config, broker on RabbitMQ and Redis, backend on
# Redis/PostgreSQL/MariaDB, serialization, polling, host, network capture, e2e) and the commands
# (doctor, probe, capture, poll-model, bench-serialize) against the real local services, without the
# heavy files (the password matrix, signals, blocked brokers, slow paths): about 3-4 min a pair.
INTEGRATION: list[str] = [
    "tests/integration/test_config_cli.py",
    "tests/integration/test_broker_rabbitmq.py",
    "tests/integration/test_broker_redis.py",
    "tests/integration/test_backend_db.py",
    "tests/integration/test_backend_redis.py",
    "tests/integration/test_serialization_database.py",
    "tests/integration/test_serialization_redis.py",
    "tests/integration/test_polling_redis.py",
    "tests/integration/test_host_probe.py",
    "tests/integration/test_capture_live.py",
    "tests/integration/test_e2e.py",
]
# The slowest tests of those files measure accuracy (an injected delay, the polling model, a 20 s
# live capture), not whether a probe works on this Celery, and an e2e pair whose code path another
# pair covers (amqp + MariaDB: the database backend is proven on PostgreSQL, SQLite and, by the
# backend probe, MariaDB). make test runs them all on the default Celery.
DESELECT: list[str] = [
    "tests/integration/test_broker_rabbitmq.py::test_latency_tracks_an_injected_delay",
    "tests/integration/test_polling_redis.py::test_measured_polling_matches_the_model",
    "tests/integration/test_capture_live.py::test_live_capture_on_lo_sees_real_amqp_and_writes_no_credentials",
    "tests/integration/test_e2e.py::test_amqp_and_mariadb",
]

PYENV_ROOT_GIVEN: Path | None = None  # --pyenv-root
PYTEST_TIMEOUT_S = 900  # one pair's whole pytest run; each test has its own 300 s timeout too


@dataclass
class Result:
    """One row of the table and of last-run.json."""

    celery: str  # the series asked for ("5.3"); celery_version is what pip installed
    python: str
    status: str = "SKIPPED"  # PASSED | FAILED | SKIPPED | ERROR (venv build or pytest crash)
    reason: str = ""
    python_version: str = ""
    celery_version: str = ""
    kombu_version: str = ""
    sqlalchemy_version: str = ""
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    build_s: float = 0.0
    test_s: float = 0.0
    skip_reasons: list[str] = field(default_factory=list)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (the log a reader opens)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def pyenv_root() -> Path | None:
    if PYENV_ROOT_GIVEN is not None:
        return PYENV_ROOT_GIVEN
    env = os.environ.get("PYENV_ROOT")
    if env:
        return Path(env)
    exe = shutil.which("pyenv")
    if exe:
        out = subprocess.run([exe, "root"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def find_python(series: str) -> tuple[Path | None, str]:
    """The newest ``<series>.N`` CPython under pyenv's versions, or None and why not."""
    root = pyenv_root()
    if root is None:
        return None, "pyenv not found (no $PYENV_ROOT, no pyenv on PATH, no ~/.pyenv)"
    versions = root / "versions"
    found = []
    for entry in versions.glob(f"{series}.*") if versions.is_dir() else []:
        match = re.fullmatch(rf"{re.escape(series)}\.(\d+)", entry.name)
        if match and (entry / "bin" / "python").exists():
            found.append((int(match.group(1)), entry / "bin" / "python"))
    if not found:
        return None, f"Python {series} not installed under {versions} (pyenv install {series})"
    return max(found)[1], ""


def run(cmd: list[str], log: Path, timeout: float | None = None) -> int:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            return subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False).returncode
        except subprocess.TimeoutExpired:
            out.write(f"timed out after {timeout} s\n")
            return 124


def build(venv: Path, python: Path, celery: str, log: Path) -> str:
    """Create or reuse the venv; '' when ready, else why not. The stamp holds what it was built from."""
    spec = f"celery~={celery}.0"
    stamp_text = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + spec.encode()
                                + str(python.resolve()).encode()).hexdigest()
    stamp = venv / ".matrix-stamp"
    if stamp.exists() and stamp.read_text() == stamp_text and (venv / "bin" / "python").exists():
        return ""
    if venv.exists():
        shutil.rmtree(venv)
    vpy = str(venv / "bin" / "python")
    steps = [
        [str(python), "-m", "venv", str(venv)],
        [vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"],
        # --no-compile: byte-compiling every installed package (numpy, scapy, hypothesis) is most of
        # a build's CPU; the tests compile only what they import
        [vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", spec,
         "-e", f"{REPO}[test,html]"],  # html: --format html and poll-model --plot
    ]
    for cmd in steps:
        if run(cmd, log, timeout=1200) != 0:
            return f"venv build failed: {' '.join(cmd[-3:])} (see {shown(log)})"
    stamp.write_text(stamp_text)
    return ""


def installed_versions(venv: Path) -> dict[str, str]:
    code = ("import json, platform, celery, kombu, sqlalchemy; print(json.dumps({'python': "
            "platform.python_version(), 'celery': celery.__version__, 'kombu': kombu.__version__, "
            "'sqlalchemy': sqlalchemy.__version__}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def count_junit(path: Path, result: Result) -> None:
    root = ET.parse(path).getroot()
    reasons = set()
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed += 1
        elif (skip := case.find("skipped")) is not None:
            result.skipped += 1
            reasons.add(re.sub(r"\s+", " ", skip.get("message", ""))[:160])
        else:
            result.passed += 1
    result.skip_reasons = sorted(reasons)


def run_pair(celery: str, python_series: str, cache: Path, extra: list[str]) -> Result:
    result = Result(celery=celery, python=python_series)
    python, why = find_python(python_series)
    if python is None:
        result.reason = why
        return result
    name = f"py{python_series}-celery{celery}"
    venv = cache / name
    log = cache / f"{name}.log"
    cache.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    started = time.monotonic()
    why = build(venv, python, celery, log)
    result.build_s = round(time.monotonic() - started, 1)
    if why:
        result.status, result.reason = "ERROR", why
        return result
    versions = installed_versions(venv)
    result.python_version = versions.get("python", "")
    result.celery_version = versions.get("celery", "")
    result.kombu_version = versions.get("kombu", "")
    result.sqlalchemy_version = versions.get("sqlalchemy", "")
    if extra == ["--build-only"]:
        result.status, result.reason = "SKIPPED", "built only (--build-only)"
        return result
    junit = cache / f"{name}.junit.xml"
    junit.unlink(missing_ok=True)
    started = time.monotonic()
    code = run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "-m", "not scenario_slow", f"--junitxml={junit}", "tests/unit", *INTEGRATION,
                *(f"--deselect={node}" for node in DESELECT), *extra],
               log, timeout=PYTEST_TIMEOUT_S)
    result.test_s = round(time.monotonic() - started, 1)
    if not junit.exists():
        result.status, result.reason = "ERROR", f"pytest exited {code} without a report (see {shown(log)})"
        return result
    count_junit(junit, result)
    result.status = "PASSED" if code == 0 and result.failed == 0 else "FAILED"
    if result.status == "FAILED":
        result.reason = f"pytest exited {code} (see {shown(log)})"
    return result


def table(results: list[Result]) -> str:
    head = ["python", "celery", "kombu", "sqlalchemy", "status", "passed", "failed", "skipped", "build s", "test s"]
    rows = [[r.python_version or r.python, r.celery_version or r.celery, r.kombu_version or "-",
             r.sqlalchemy_version or "-", r.status, str(r.passed), str(r.failed), str(r.skipped),
             f"{r.build_s:.0f}", f"{r.test_s:.0f}"] for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [head, *rows]]
    for r in results:
        if r.reason:
            lines.append(f"{r.status}: python {r.python} / celery {r.celery}: {r.reason}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[],
                        help="run only the pairs whose Celery or Python series is this (repeatable)")
    parser.add_argument("--cache", default=str(REPO / ".matrix"), help="where the venvs live (.matrix/)")
    parser.add_argument("--build-only", action="store_true", help="build the venvs, run no test")
    parser.add_argument("--pyenv-root", help="where the Pythons are (default: $(pyenv root))")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    global PYENV_ROOT_GIVEN
    PYENV_ROOT_GIVEN = Path(args.pyenv_root) if args.pyenv_root else None
    cache = Path(args.cache).resolve()
    pairs = [p for p in PAIRS if not args.only or set(p) & set(args.only)]
    extra = ["--build-only"] if args.build_only else args.pytest_args
    started = time.monotonic()
    results = []
    for celery, python in pairs:
        print(f"== celery {celery} on python {python}", flush=True)
        result = run_pair(celery, python, cache, extra)
        print(f"   {result.status} {result.passed} passed, {result.failed} failed, {result.skipped} skipped "
              f"(build {result.build_s:.0f} s, tests {result.test_s:.0f} s) {result.reason}", flush=True)
        results.append(result)
    wall_s = round(time.monotonic() - started, 1)
    print()
    print(table(results))
    print(f"matrix wall time: {wall_s:.0f} s")
    if not args.build_only:
        doc = {"format": "celerydiag.matrix/1", "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": platform.machine(), "wall_s": wall_s, "integration": INTEGRATION,
               "results": [asdict(r) for r in results]}
        out = cache / "last-run.json"
        cache.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {shown(out)}")
    ran = [r for r in results if r.status not in ("SKIPPED",)]
    if args.build_only:
        return 1 if any(r.status == "ERROR" for r in results) else 0
    return 0 if ran and all(r.status == "PASSED" for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
