"""Open an HTML report in headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) and say what a reader would see: console errors, each chart's rendered size, a
screenshot. The browser test and scripts/html_screenshot.py (the README's docs/html-report.png)
share it, so the picture in the README is what the test looked at."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def missing() -> str | None:
    """Why the browser cannot run here (None when it can): the reason a test skips with."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(os.path.basename(path))):
            return f"{path} is missing (bash scripts/system-packages.sh installs chromium and chromium-driver)"
    return None


@dataclass
class Seen:
    console_errors: list[str]
    charts: dict[str, tuple[float, float]]  # data-chart name -> (width, height) of its <svg>, in CSS px
    title: str
    text: str = ""
    sizes: dict[str, Any] = field(default_factory=dict)


def open_report(html: Path, screenshot: Path | None = None, width: int = 1200, height: int = 900,
                full_page: bool = False) -> Seen:
    """Load ``html`` from disk (file://, no server, no network) and look at it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(html.resolve().as_uri())
        charts = {}
        for fig in driver.find_elements(By.CSS_SELECTOR, "figure.chart"):
            svg = fig.find_element(By.TAG_NAME, "svg")
            size = svg.size
            charts[fig.get_attribute("data-chart") or "?"] = (float(size["width"]), float(size["height"]))
        if screenshot is not None:
            if full_page:
                total = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(width, min(int(total) + 40, 6000))
            driver.save_screenshot(str(screenshot))
        errors = [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        return Seen(errors, charts, driver.title, driver.find_element(By.TAG_NAME, "body").text)
    finally:
        driver.quit()
