"""Exit codes as documented (issue 12, point 7): a user's mistake is exit 2 with one line, never
4 "a bug of ours"; --traceback shows our bug and keeps its exit code."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from celerydiag.cli import main
from celerydiag.errors import ExitCode

TESTS = Path(__file__).resolve().parents[1]
REPORTS = TESTS / "fixtures" / "reports"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return int(code), out, err


def one_line(err: str, *needles: str) -> str:
    # doctor states its bound before its probes (issue 12 point 2): not an error line
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("  hint:")
             and not line.startswith("celerydiag: bounded: ")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("celerydiag: error:"), err
    for needle in needles:
        assert needle in err, err
    return lines[0]


# ---- --traceback -----------------------------------------------------------------------------------

def test_traceback_is_in_the_top_level_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == ExitCode.OK
    assert "--traceback" in out and "exit 4" in out, out


@pytest.fixture
def our_bug(monkeypatch):
    """A bug of ours where a command does its work: merging saved reports raises."""
    import celerydiag.merge

    def broken(*args, **kw):
        raise RuntimeError("an invariant of ours broke")

    monkeypatch.setattr(celerydiag.merge, "merge_reports", broken)


def test_an_internal_error_is_exit_4_with_one_line(capsys, our_bug):
    code, out, err = run(capsys, "report", str(REPORTS / "full-v2.json"))
    assert code == ExitCode.INTERNAL, err
    assert "Traceback" not in err and "an invariant of ours broke" in err and "--traceback" in err


@pytest.mark.parametrize("how", ["before", "after", "env"])
def test_traceback_shows_the_traceback_and_keeps_exit_4(capsys, monkeypatch, our_bug, how):
    args = ["report", str(REPORTS / "full-v2.json")]
    if how == "env":
        monkeypatch.setenv("CELERYDIAG_TRACEBACK", "1")
    else:
        args = ["--traceback", *args] if how == "before" else [*args, "--traceback"]
    code, out, err = run(capsys, *args)
    assert code == ExitCode.INTERNAL, err
    assert "Traceback (most recent call last)" in err and "RuntimeError: an invariant of ours broke" in err
    assert out == ""


def test_a_traceback_is_scrubbed_of_the_targets_password(capsys, monkeypatch):
    """The traceback a user pastes into a bug report holds no password either."""
    import celerydiag.doctor

    def broken(target, *args, **kw):
        raise RuntimeError(f"cannot use {target.broker_url}")

    monkeypatch.setattr(celerydiag.doctor, "diagnose", broken)
    code, out, err = run(capsys, "--traceback", "doctor", "--broker", "redis://:Sup3rSecretPw@127.0.0.1:6379/0",
                         "--backend", "redis://:Sup3rSecretPw@127.0.0.1:6379/0")
    assert code == ExitCode.INTERNAL, err
    assert "Traceback" in err and "Sup3rSecretPw" not in err, err


# ---- a full disk (/dev/full: every write is ENOSPC) ------------------------------------------------

FULL = "/dev/full"
# One cheap run of each command that writes a document (no service needed).
DOCUMENTS = {
    "doctor": ["doctor", "--static", "--app", "tapp_clean:app"],
    "probe": ["probe", "config", "--app", "tapp_clean:app", "--format", "json"],
    "probe-list": ["probe", "--list"],
    "report": ["report", str(REPORTS / "full-v2.json"), "--format", "markdown"],
    "poll-model": ["poll-model", "--tasks", "100", "--strategy", "fixed"],
    "bench-serialize": ["bench-serialize", "--quick", "-k", "progress-meta", "-s", "json", "--format", "json"],
}


def _full(cli_argv, args, **kw):
    import subprocess

    from tests.conftest import clean_env

    with open(FULL, "w") as full:
        return subprocess.run([*cli_argv, *args], cwd=TESTS / "fixtures" / "apps", env=clean_env(),
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, **kw)


@pytest.mark.skipif(not Path(FULL).exists(), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_stdout_on_a_full_disk_is_exit_2_with_one_line(cli_argv, name):
    done = _full(cli_argv, DOCUMENTS[name])
    assert done.returncode == ExitCode.USAGE, done.stderr
    line = one_line(done.stderr, "No space left on device")
    assert "stdout" in line and "bug" not in done.stderr
    assert "Exception ignored" not in done.stderr  # the interpreter's last flush did not fail again


@pytest.mark.skipif(not Path(FULL).exists(), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("name", ["doctor", "report", "poll-model", "bench-serialize"])
def test_output_on_a_full_disk_is_exit_2_with_one_line(cli_argv, name):
    done = _full(cli_argv, [*DOCUMENTS[name], "--output", FULL])
    assert done.returncode == ExitCode.USAGE, done.stderr
    one_line(done.stderr, f"--output {FULL}", "No space left on device")


# ---- -A module:attr where attr is not a Celery app -------------------------------------------------

NOT_APPS = {"an_int": ("x", "an int"), "a_function": ("f", "a function"), "a_module": ("os", "a module"),
            "a_class": ("Celery", "a type"), "none": ("nothing", "is None")}


@pytest.mark.parametrize("case", sorted(NOT_APPS))
@pytest.mark.parametrize("command", [["doctor", "--static"], ["probe", "config"], ["doctor"]])
def test_an_app_attr_that_is_not_a_celery_app_is_exit_2_with_one_line(capsys, monkeypatch, tmp_path, case,
                                                                      command):
    (tmp_path / "exits_notapp.py").write_text(
        "import os\nfrom celery import Celery\nx = 1\nnothing = None\ndef f():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "exits_notapp", raising=False)
    attr, kind = NOT_APPS[case]
    code, out, err = run(capsys, *command, "-A", f"exits_notapp:{attr}")
    assert code == ExitCode.USAGE, err
    one_line(err, f"exits_notapp:{attr}", kind, "not a Celery app", "hint:")
    assert out == ""


# ---- files a command writes besides its document: capture --write, poll-model --plot ---------------

PCAP = TESTS.parent / "fixtures" / "pcaps" / "amqp_healthy.pcap"
UNWRITABLE = {"no-folder": ("/nonexistent/x.pcap", "No such directory"),
              "full-disk": (FULL, "No space left on device")}


@pytest.mark.parametrize("scrub", ["--scrub", "--no-scrub"])
@pytest.mark.parametrize("case", sorted(UNWRITABLE))
def test_capture_write_to_an_unwritable_place_is_exit_2_with_one_line(capsys, case, scrub):
    path, why = UNWRITABLE[case]
    code, out, err = run(capsys, "capture", "--read", str(PCAP), "--write", path, scrub)
    assert code == ExitCode.USAGE, err
    one_line(err, f"--write {path}", why)
    assert out == ""
    # The failed copy is removed only when it is a regular file: as root, an unlink of /dev/full
    # destroyed the device for every later test (seen here).
    if path == FULL:
        assert stat.S_ISCHR(os.stat(FULL).st_mode), f"{FULL} is no longer a device"


def test_capture_write_into_a_missing_folder_fails_before_the_live_capture(capsys):
    """Checked before the capture, as --output is: the user does not wait --duration for an error
    (lo needs root or CAP_NET_RAW; the check comes first either way, so no privileges are needed)."""
    import time

    started = time.monotonic()
    code, out, err = run(capsys, "capture", "--iface", "lo", "--duration", "30", "--write", "/nonexistent/x.pcap")
    assert code == ExitCode.USAGE, err
    one_line(err, "--write /nonexistent/x.pcap", "No such directory")
    assert "capturing on" not in err and time.monotonic() - started < 20


@pytest.mark.parametrize("case", sorted(UNWRITABLE))
def test_poll_model_plot_to_an_unwritable_place_is_exit_2_with_one_line(capsys, case):
    path, why = UNWRITABLE[case]
    code, out, err = run(capsys, "poll-model", "--tasks", "100", "--strategy", "fixed", "--plot", path)
    assert code == ExitCode.USAGE, err
    one_line(err, f"--plot {path}", why)


# ---- inputs nested deeper than Python recurses ----------------------------------------------------

# Depths this Python's json and pickle refuse (RecursionError). Up to 3.11 their C code counts
# against sys.getrecursionlimit() (1000): 990 levels fail under pytest's frames, 5000 always.
# 3.12 moved the check to the C stack: 990 levels read fine there, and 5000 on 3.13 (make
# test-matrix runs both); 200 000 is past every version's limit.
DEPTHS = [990, 5000] if sys.version_info < (3, 12) else [200_000]
DEEPEST = DEPTHS[-1]


def _deep(tmp_path, kind: str, depth: int = DEEPEST) -> Path:
    path = tmp_path / f"deep-{kind}.json"
    text = "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth
    path.write_text(text)
    return path


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("kind", ["array", "object"])
def test_bench_serialize_on_a_deeply_nested_payload_is_exit_2_saying_so(capsys, tmp_path, kind, depth):
    path = _deep(tmp_path, kind, depth)
    code, out, err = run(capsys, "bench-serialize", "--quick", "-s", "json", "--payload", str(path))
    assert code == ExitCode.USAGE, err
    one_line(err, f"--payload {path}", "nests too deep", "hint:")
    assert out == ""


def test_bench_serialize_on_a_deeply_nested_pickle_says_each_serializer_fails(capsys, tmp_path):
    """Unpickling does not recurse, so a deep pickle loads: then every serializer's own recursion
    limit is a result of the benchmark (a failed case), as Celery would meet it, not our error."""
    import json

    path = tmp_path / "deep.pickle"
    # protocol 2, then DEEPEST EMPTY_LISTs closed by DEEPEST - 1 APPENDs: DEEPEST nested lists
    path.write_bytes(b"\x80\x02" + b"]" * DEEPEST + b"a" * (DEEPEST - 1) + b".")
    code, out, err = run(capsys, "bench-serialize", "--quick", "-s", "json", "-s", "pickle", "--trust-pickle",
                         "--payload", str(path), "--format", "json")
    assert code == ExitCode.OK, err
    cases = json.loads(out)["results"]
    assert {c["serializer"] for c in cases} == {"json", "pickle"}
    assert all("recursion" in (c["error"] or "") for c in cases), cases


def test_bench_serialize_compare_on_a_deeply_nested_file_is_exit_2(capsys, tmp_path):
    path = _deep(tmp_path, "array")
    code, out, err = run(capsys, "bench-serialize", "--quick", "-s", "json", "-k", "progress-meta",
                         "--compare", str(path))
    assert code == ExitCode.USAGE, err
    one_line(err, f"--compare {path}", "nests too deep")


def test_report_on_a_deeply_nested_file_is_exit_2(capsys, tmp_path):
    path = _deep(tmp_path, "object")
    code, out, err = run(capsys, "report", str(path))
    assert code == ExitCode.USAGE, err
    one_line(err, str(path), "nests too deep")


# ---- report: what a file that is not a readable report says ----------------------------------------

def _saved(tmp_path, name: str, change) -> Path:
    import json

    doc = json.loads((REPORTS / "full-v2.json").read_text(encoding="utf-8"))
    change(doc)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_report_reads_a_report_2_file(capsys, check_report):
    """The schema this version writes loads (issue 12 saw "not a celerydiag JSON report" for it)."""
    import json

    code, out, err = run(capsys, "report", str(REPORTS / "full-v2.json"), "--format", "json", "--fail-on", "never")
    assert code == ExitCode.OK, err
    check_report(json.loads(out))


def test_report_on_a_newer_schema_says_a_newer_celerydiag_made_it(capsys, tmp_path):
    def newer(doc):
        doc.update(schema="celerydiag.report/3", version="9.0.0")

    path = _saved(tmp_path, "newer", newer)
    code, out, err = run(capsys, "report", str(path))
    assert code == ExitCode.USAGE, err
    line = one_line(err, "made by a newer celerydiag 9.0.0", "celerydiag.report/3", "hint: upgrade celerydiag")
    assert "not a celerydiag JSON report" not in line


MALFORMED = {
    "finding-without-id": (lambda d: d["findings"][0].pop("id"), "findings[0] has no 'id' field"),
    "finding-without-cause": (lambda d: d["findings"][1].pop("cause"), "findings[1] has no 'cause' field"),
    "probe-without-name": (lambda d: d["probes"][0].pop("name"), "probes[0] has no 'name' field"),
    "probe-without-status": (lambda d: d["probes"][0].pop("status"), "probes[0] has no 'status' field"),
    "bad-severity": (lambda d: d["findings"][0].update(severity="bogus"), "findings[0].severity: 'bogus'"),
    "number-severity": (lambda d: d["findings"][0].update(severity=3), "findings[0].severity: 3"),
    "bad-cause": (lambda d: d["findings"][0].update(cause="nope"), "findings[0].cause: 'nope'"),
    "fix-a-string": (lambda d: d["findings"][0].update(fix="x"), "findings[0].fix: a JSON string"),
    "evidence-a-list": (lambda d: d["findings"][0].update(evidence=[1]), "findings[0].evidence: a JSON array"),
    "findings-a-string": (lambda d: d.update(findings="x"), "findings is a JSON string, not an array"),
    "finding-a-number": (lambda d: d["findings"].insert(0, 7), "findings[0] is a JSON number, not an object"),
    "impact-a-word": (lambda d: d["findings"][0].update(impact_ms="lots"), "findings[0].impact_ms:"),
    "budget-nan": (lambda d: d.update(budget_ms=float("nan")), "budget_ms is nan"),
    "no-schema": (lambda d: d.pop("schema"), 'no "schema" field'),
    "target-a-list": (lambda d: d.update(target=[1]), "target: a JSON array, not an object"),
    "observed-a-word": (lambda d: d["latency"].update(observed_p99_ms="x"), "latency.observed_p99_ms: 'x'"),
    "by-cause-a-list": (lambda d: d["latency"].update(by_cause_ms=[1]), "latency.by_cause_ms: a JSON array"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_report_on_a_malformed_file_names_the_field_in_one_line(capsys, tmp_path, case):
    change, said = MALFORMED[case]
    path = _saved(tmp_path, case, change)
    code, out, err = run(capsys, "report", str(path))
    assert code == ExitCode.USAGE, err
    line = one_line(err, "not a celerydiag JSON report", said, "hint:")
    assert "KeyError" not in err and "Error:" not in line.split("error:", 1)[1], line
    assert out == ""


def test_report_on_a_capture_document_says_what_it_is_and_what_to_do(capsys, tmp_path):
    capture = tmp_path / "capture.json"
    code, _, err = run(capsys, "capture", "--read", str(PCAP), "--format", "json", "-o", str(capture))
    assert code == ExitCode.OK, err
    code, out, err = run(capsys, "report", str(capture))
    assert code == ExitCode.USAGE, err
    one_line(err, "is a capture document", "not a report", "celerydiag capture --read",
             "celerydiag doctor --pcap")


@pytest.mark.parametrize("command", [["poll-model", "--tasks", "100", "--strategy", "fixed"],
                                     ["bench-serialize", "--quick", "-s", "json", "-k", "progress-meta"]])
def test_report_on_another_celerydiag_document_says_which(capsys, tmp_path, command):
    saved = tmp_path / "doc.json"
    code, _, err = run(capsys, *command, "--format", "json", "-o", str(saved))
    assert code == ExitCode.OK, err
    code, out, err = run(capsys, "report", str(saved))
    assert code == ExitCode.USAGE, err
    one_line(err, f"is a {command[0]} document", "not a report", "hint:")


# ---- bench-serialize --compare on a malformed saved document ---------------------------------------

COMPARE = {
    "results-a-number": ({"results": 5}, "results is not a list"),
    "row-a-number": ({"results": [5]}, "results[0] is not an object"),
    "no-serializer": ({"results": [{"payload": "progress-meta"}]}, "results[0].serializer"),
    "timing-a-word": ({"results": [{"payload": "progress-meta", "serializer": "json", "encode_ms": "x"}]},
                      "results[0].encode_ms is not an object"),
    "median-nan": ({"results": [{"payload": "progress-meta", "serializer": "json", "decode_ms": {"median": "NaN"}}]},
                   "results[0].decode_ms.median"),
    "size-a-list": ({"results": [{"payload": "progress-meta", "serializer": "json", "size_bytes": [1]}]},
                    "results[0].size_bytes"),
}


@pytest.mark.parametrize("case", sorted(COMPARE))
def test_bench_serialize_compare_on_a_malformed_document_is_exit_2_naming_the_field(capsys, tmp_path, case):
    import json

    body, said = COMPARE[case]
    path = tmp_path / "before.json"
    path.write_text(json.dumps({"schema": "celerydiag.bench-serialize/1", **body}))
    code, out, err = run(capsys, "bench-serialize", "--quick", "-s", "json", "-k", "progress-meta",
                         "--compare", str(path))
    assert code == ExitCode.USAGE, err
    one_line(err, f"--compare {path}", said, "hint:")
