"""Every kind of HTML report, opened in a real browser (headless Debian Chromium through Selenium):
no console errors, each chart drawn with a non-zero size, a screenshot under the test's temp dir,
no password in the page. The reports come from the real console script, as a user makes them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import browser

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "tests" / "fixtures" / "reports"
PCAPS = ROOT / "fixtures" / "pcaps"
SECRET = "Sup3rS3cret-html"
BOUNDS = ("--updates", "60", "--samples", "60", "--max-seconds", "8", "--duration", "0.5", "--timeout", "3")

# kind -> (command line before -f html -o FILE, the charts it must draw)
KINDS: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "report": (("report", str(REPORTS / "charts-v2.json")), {"impact", "e2e-visibility", "lock-waits"}),
    "merged-report": (("report", str(REPORTS / "full-v1.json"), str(REPORTS / "host-b-v1.json")), {"impact"}),
    "capture": (("capture", "--read", str(PCAPS / "amqp_missed_heartbeat.pcap")), {"capture-timeline", "impact"}),
    "capture-zero-window": (("capture", "--read", str(PCAPS / "amqp_zero_window.pcap")), {"capture-timeline"}),
    "poll-model": (("poll-model", "--tasks", "300", "--interval", "1s"), {"poll-cdf"}),
    "doctor-static-with-a-password": (("doctor", "--static", "--broker", f"amqp://u:{SECRET}@127.0.0.1:5672//",
                                       "--backend", f"redis://:{SECRET}@127.0.0.1:6379/0"), set()),
    "doctor-embedded": (("doctor", *BOUNDS), {"impact"}),
}


@pytest.fixture(scope="module", autouse=True)
def _browser_installed() -> None:
    why = browser.missing()
    if why:
        raise AssertionError(f"the HTML browser test needs Chromium and Selenium: {why}")


def make_html(run_cli: Any, tmp_path: Path, args: tuple[str, ...]) -> Path:
    out = tmp_path / "report.html"
    proc = run_cli(*args, "--format", "html", "--output", str(out), timeout=180)
    assert proc.returncode in (0, 1), proc.stderr  # 1: findings at --fail-on, still a full report
    assert out.stat().st_size > 0
    return out


def look(html: Path, tmp_path: Path, expected: set[str]) -> browser.Seen:
    shot = tmp_path / "screenshot.png"
    seen = browser.open_report(html, shot)
    assert seen.console_errors == []
    assert expected <= set(seen.charts), f"charts drawn: {sorted(seen.charts)}"
    for name, (width, height) in seen.charts.items():
        assert width > 0 and height > 0, f"chart {name} has size {width}x{height}"
    assert shot.stat().st_size > 0
    return seen


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_html_report_in_chromium(run_cli: Any, tmp_path: Path, kind: str) -> None:
    args, expected = KINDS[kind]
    html = make_html(run_cli, tmp_path, args)
    seen = look(html, tmp_path, expected)
    text = html.read_text(encoding="utf-8")
    assert SECRET not in text and SECRET not in seen.text
    assert "<script" not in text and not re.search(r'(src|xlink:href|url)[=(]"?https?:', text)  # nothing to fetch
    first = seen.text.splitlines()[1:2]  # after the page's title: the verdict (poll-model: its recommendation)
    assert first and first[0].startswith(("Verdict:", "Recommendation")), seen.text[:300]


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.postgres
def test_doctor_html_on_the_real_services(run_cli: Any, tmp_path: Path) -> None:
    """Redis broker, PostgreSQL results logged in with a password (trust auth takes any): the e2e
    distribution and the impact bars, and the password nowhere in the page."""
    args = ("doctor", "--broker", "redis://127.0.0.1:6379/0",
            "--backend", f"db+postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test", *BOUNDS)
    html = make_html(run_cli, tmp_path, args)
    seen = look(html, tmp_path, {"impact", "e2e-visibility"})
    assert SECRET not in html.read_text(encoding="utf-8") and SECRET not in seen.text
    assert "postgres:**@" in seen.text


@pytest.mark.integration
@pytest.mark.postgres
def test_lock_wait_chart_from_a_real_blocker(run_cli: Any, tmp_path: Path, pg_url: str) -> None:
    """A real blocker (an open transaction holding a task row) and a real waiter on PostgreSQL:
    the backend probe keeps when the wait was seen, and the page draws blocker -> blocked."""
    import threading
    import uuid

    import psycopg

    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    task_id = f"celerydiag-html-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        # the shared test database is not ours: a table we create here we drop again at the end
        created = admin.execute("SELECT to_regclass('public.celery_taskmeta') IS NULL").fetchone()[0]
        admin.execute("CREATE TABLE IF NOT EXISTS celery_taskmeta (id serial PRIMARY KEY, task_id varchar(155) "
                      "UNIQUE, status varchar(50), result bytea, date_done timestamp, traceback text)")
        admin.execute("INSERT INTO celery_taskmeta (task_id, status) VALUES (%s, 'PENDING')", (task_id,))
        holder = psycopg.connect(url)
        waiter_done = threading.Event()

        def wait_for_the_row() -> None:
            with psycopg.connect(url) as waiter:
                try:  # bounded: the lock_timeout ends it even if the holder were never released
                    waiter.execute("SET lock_timeout = '20s'")
                    waiter.execute("UPDATE celery_taskmeta SET status = 'PROGRESS' WHERE task_id = %s", (task_id,))
                except psycopg.errors.LockNotAvailable:
                    pass
                finally:
                    waiter.rollback()
                    waiter_done.set()

        thread = threading.Thread(target=wait_for_the_row, daemon=True)
        try:
            holder.execute("UPDATE celery_taskmeta SET status = 'STARTED' WHERE task_id = %s", (task_id,))
            thread.start()
            backend = url.replace("postgresql://postgres@", f"db+postgresql+psycopg://postgres:{SECRET}@")
            html = make_html(run_cli, tmp_path, ("probe", "backend", "--broker", "memory://", "--backend", backend,
                                                 "--duration", "2", "--samples", "60", "--max-seconds", "10"))
        finally:
            holder.rollback()
            holder.close()
            waiter_done.wait(25)
            admin.execute("DELETE FROM celery_taskmeta WHERE task_id = %s", (task_id,))
            if created:
                admin.execute("DROP TABLE celery_taskmeta")
    seen = look(html, tmp_path, {"lock-waits", "impact"})
    assert "blocker" in html.read_text(encoding="utf-8") and SECRET not in seen.text
