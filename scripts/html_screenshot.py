"""Write docs/html-report.png, the README's picture of the HTML report, with the browser test's
own code (tests/support/browser.py): the canonical example report (tests/fixtures/reports/
charts-v2.json) rendered by `celerydiag report --format html`, opened in headless Chromium.

    PYTHONPATH=. .venv/bin/python scripts/html_screenshot.py [OUT.png]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from celerydiag.cli import main  # noqa: E402
from tests.support.browser import missing, open_report  # noqa: E402

COLORS = 96  # a palette PNG: the screenshot stays small in the repository


def shoot(out: Path) -> Path:
    why = missing()
    if why:
        raise SystemExit(f"html_screenshot: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "report.html"
        code = main(["report", str(ROOT / "tests/fixtures/reports/charts-v2.json"), "--format", "html",
                     "--output", str(html)])
        if code not in (0, 1):
            raise SystemExit(f"html_screenshot: celerydiag report exited {code}")
        raw = Path(tmp) / "raw.png"
        open_report(html, raw, width=1000, height=1250)
        from PIL import Image  # matplotlib's own dependency: there whenever the html extra is

        Image.open(raw).convert("RGB").quantize(COLORS).save(out, optimize=True)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "html-report.png"
    print(f"wrote {shoot(target)} ({target.stat().st_size // 1024} KiB)")
