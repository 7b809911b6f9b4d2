"""What every scenario shares: the user's config file, a real worker, the doctor as users run it, and
the one definition of "the doctor named the cause".

Top-ranked cause (the accuracy metric, used by the tests and by ``bench/accuracy.py``): the ``cause``
of the first finding in the report's ranked list (severity, then ``impact_ms``, both descending) that
is not ``ok`` and whose cause is not ``e2e`` (e2e measures the total, not a cause). ``config``
findings count: a static hazard ranked above the measured cause is a miss, and the healthy baseline
is configured the way a careful user would (see the baseline scenario) so it has none.

Results: when ``CELERYDIAG_ACCURACY_DIR`` is set, each scenario writes ``<name>.json`` there (the
injected cause, the top-ranked cause and finding before and after the fix) for the confusion matrix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celerydiag.config.fixes import retry_settings
from celerydiag.config.probe import RECOMMENDED_REDIS
from tests.conftest import CLI, REPO, clean_env

APP = "tests.scenarios.apps.scenario_app:app"
# Bounded doctor runs (what a careful user passes on production): 100 messages/writes per probe
# and 10 s per active probe at most; --updates stays at its default so e2e's P99 is trustworthy.
DOCTOR_BOUNDS = ("--samples", "100", "--max-seconds", "10")
DOCTOR_TIMEOUT_S = 240.0
RESULTS_ENV = "CELERYDIAG_ACCURACY_DIR"
# The Redis settings the config probe recommends (its config.redis-socket-timeout fix), which a
# careful user has in any production app with a Redis result backend: bounded socket waits, a
# health check on idle connections, and result_backend_always_retry with a finite
# result_backend_max_retries, so a stalled connection's store is retried on a new one instead of
# failing the task (no redis_retry_on_timeout: it would double every wait). Built from the
# probe's own values, so the baseline cannot drift from the advice it checks.
CAREFUL_REDIS = {**RECOMMENDED_REDIS, **retry_settings({})}


def unique(prefix: str = "cdscn") -> str:
    """A scratch name no other run (or user) has: queues, keys, tables and files are named after it."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class UserConfig:
    """A ``celeryconfig_<id>.py`` in a temp dir: what the worker and ``doctor --app`` load.

    ``paste(text)`` appends a finding's ``fix.config`` verbatim, the way a user applies it."""

    def __init__(self, directory: Path, **settings: Any) -> None:
        self.name = unique("celeryconfig")
        self.path = Path(directory) / f"{self.name}.py"
        self.stop_file = str(Path(directory) / f"{self.name}.stop")  # the scenario app's tasks end when it exists
        lines = ['"""Written by a celerydiag accuracy scenario."""']
        lines += [f"{key} = {value!r}" for key, value in settings.items()]
        self.path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def paste(self, text: str) -> None:
        assert text.strip(), "the finding printed no config to paste"
        with self.path.open("a", encoding="utf-8") as f:
            f.write("\n# pasted from celerydiag's fix\n" + text.rstrip("\n") + "\n")

    def settings(self) -> dict[str, Any]:
        """The file's settings, as Celery's config_from_object sees them (lowercase names)."""
        namespace: dict[str, Any] = {}
        exec(compile(self.path.read_text(encoding="utf-8"), str(self.path), "exec"), namespace)
        return {k: v for k, v in namespace.items() if k.islower() and not k.startswith("_")}

    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(self.path.parent), str(REPO)])
        return {"CELERYDIAG_SCENARIO_CONFIG": self.name, "PYTHONPATH": path}

    def client(self) -> Any:
        """A client app with the file's current settings (a web process sending tasks)."""
        from celery import Celery

        app = Celery("celerydiag-scenario-client", set_as_current=False)
        app.conf.update(self.settings())
        return app


def send(config: UserConfig, name: str, *args: Any) -> str:
    """Send one task of the scenario app the way a web process does; its task id."""
    app = config.client()
    try:
        return app.send_task(name, args=list(args)).id
    finally:
        app.close()


class Worker:
    """``celery -A tests.scenarios.apps.scenario_app:app worker`` in its own process group (pool solo,
    the config's own queue), so it can be paused (SIGSTOP) and is always ended in ``stop()``."""

    def __init__(self, config: UserConfig, *extra: str) -> None:
        self.config = config
        argv = [sys.executable, "-m", "celery", "-A", APP, "worker", "-P", "solo", "-c", "1",
                "-n", f"{config.name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-l", "WARNING", *extra]
        self.log = config.path.with_suffix(".worker.log")
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=clean_env(**config.env()), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """The worker consumes its queue, then one echo task round trip (it stores results).

        Waiting for the consumer first matters: kombu's producer pool is per process and per URL, so
        a queue this process declared before (for an earlier worker, since deleted) is not declared
        again, and a task sent before the new worker declares it would be dropped unrouted."""
        settings = self.config.settings()
        broker = str(settings.get("broker_url", ""))
        if broker.startswith(("amqp", "pyamqp")):
            wait_for(lambda: self.proc.poll() is not None or consumers(broker, settings["task_default_queue"]),
                     timeout_s, "the worker to consume its queue")
            assert self.proc.poll() is None, f"worker exited {self.proc.returncode}; log:\n{self.tail()}"
        app = self.config.client()
        try:
            result = app.send_task("scenario.echo", args=["ready"])
            try:
                assert result.get(timeout=timeout_s) == "ready"
            except Exception as exc:
                raise AssertionError(f"worker not ready ({type(exc).__name__}: {exc}); log:\n{self.tail()}") from None
        finally:
            app.close()

    def tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log.read_bytes()[-chars:].decode(errors="replace")

    def stop(self) -> None:
        """End the tasks (stop file), SIGCONT (a paused worker cannot exit), SIGTERM, SIGKILL after 10 s."""
        Path(self.config.stop_file).touch()
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextmanager
def worker(config: UserConfig, *extra: str, ready: bool = True) -> Iterator[Worker]:
    """A running worker; on exit it is stopped and its queue deleted (an AMQP broker keeps it)."""
    w = Worker(config, *extra)
    try:
        if ready:
            w.wait_ready()
        yield w
    finally:
        w.stop()
        broker = str(config.settings().get("broker_url", ""))
        if broker.startswith(("amqp", "pyamqp")):
            delete_queue(broker, config.settings()["task_default_queue"])


def consumers(amqp: str, name: str) -> int:
    """Consumers on a queue (passive declare: creates nothing); 0 when it does not exist yet."""
    from kombu import Connection

    try:
        with Connection(amqp, connect_timeout=5) as conn:
            return int(conn.default_channel.queue_declare(name, passive=True).consumer_count)
    except Exception:
        return 0


def delete_queue(amqp: str, name: str) -> None:
    """Remove a scenario's queue and its exchange (Celery names it after the queue); quiet when they
    are already gone (or the broker path is gone)."""
    from kombu import Connection

    try:
        with Connection(amqp, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(name)
            conn.default_channel.exchange_delete(name)
    except Exception:
        pass


@contextmanager
def tcpdump(path: Path, port: int, max_seconds: float = 120.0) -> Iterator[Path]:
    """Capture loopback traffic on one TCP port only (the scenario's own relay) into ``path``; stopped
    with SIGINT on exit (and by tcpdump's own -G/-W bound should the test die), the file left for
    --pcap. Never any traffic but the port named."""
    argv = ["tcpdump", "-i", "lo", "-w", str(path), "-U", "-s", "0", "-n",
            "-G", str(int(max_seconds)), "-W", "1", f"tcp port {port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: proc.poll() is not None or (path.exists() and path.stat().st_size >= 24), 10,
                 "tcpdump to open its file")
        why = proc.stderr.read().decode(errors="replace") if proc.poll() is not None and proc.stderr else ""
        assert proc.poll() is None, f"tcpdump exited: {why}"
        time.sleep(0.5)  # the filter is attached before the file is opened; a little slack for the kernel
        yield path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def doctor(config: UserConfig, *args: str, timeout_s: float = DOCTOR_TIMEOUT_S) -> dict[str, Any]:
    """``celerydiag doctor --app … --format json`` in a subprocess, as a user runs it; the parsed report."""
    argv = [*CLI, "doctor", "--app", APP, "--format", "json", *DOCTOR_BOUNDS, *args]
    done = subprocess.run(argv, cwd=REPO, env=clean_env(**config.env()), capture_output=True, text=True,
                          timeout=timeout_s)
    assert done.returncode in (0, 1), (f"doctor exited {done.returncode}: {done.stderr.strip()[-2000:]}\n"
                                       f"argv: {' '.join(argv)}")
    report = json.loads(done.stdout)
    failed = [p for p in report["probes"] if p["status"] == "failed"]
    assert not failed, f"probes failed: {failed}"
    return report


def top_finding(report: dict[str, Any]) -> dict[str, Any] | None:
    """The first ranked finding that is not ok and not e2e (see the module docstring)."""
    for finding in report["findings"]:
        if finding["severity"] != "ok" and finding["cause"] != "e2e":
            return finding
    return None


def top_cause(report: dict[str, Any]) -> str:
    found = top_finding(report)
    return found["cause"] if found else "none"


def at_or_above_warning(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["severity"] in ("warning", "critical")]


def finding(report: dict[str, Any], fid: str) -> dict[str, Any] | None:
    return next((f for f in report["findings"] if f["id"] == fid), None)


def ranked(report: dict[str, Any], limit: int = 8) -> str:
    """The head of the ranked list, for assertion messages."""
    return "; ".join(f"{f['severity']} {f['impact_ms']:.1f} ms {f['id']}" for f in report["findings"][:limit])


def brief(f: dict[str, Any] | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"id": f["id"], "cause": f["cause"], "severity": f["severity"], "impact_ms": f["impact_ms"]}


def record(name: str, injected: str, before: dict[str, Any], after: dict[str, Any] | None = None,
           checked_id: str | None = None) -> None:
    """Write the scenario's outcome for bench/accuracy.py (only when CELERYDIAG_ACCURACY_DIR is set)."""
    out = os.environ.get(RESULTS_ENV)
    if not out:
        return
    doc = {"scenario": name, "injected": injected, "top_cause": top_cause(before),
           "top_finding": brief(top_finding(before)),
           "warnings_count": len(at_or_above_warning(before)),
           "head": [brief(f) for f in before["findings"][:6]],
           "probes_s": {p["name"]: p["elapsed_s"] for p in before["probes"]}}
    if after is not None:
        doc["after_fix"] = {"top_cause": top_cause(after), "top_finding": brief(top_finding(after)),
                            "checked": brief(finding(after, checked_id)) if checked_id else None,
                            "warnings_count": len(at_or_above_warning(after))}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{name}.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")


def fix_config(f: dict[str, Any]) -> str:
    fix = f.get("fix") or {}
    return str(fix.get("config") or "")


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
