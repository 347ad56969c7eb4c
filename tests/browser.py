"""Debian's Chromium, headless, driven through its WebDriver (chromium-driver) by Selenium: what the catalogue site's
test loads its pages in. No network: the flags keep Chromium from calling home, and the pages come from files."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"  # Debian's packages chromium and chromium-driver, on PATH
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000")


def missing() -> str | None:
    found = [name for name in (CHROMIUM, CHROMEDRIVER) if not shutil.which(name)]
    return f"{', '.join(found)} missing: `bash scripts/setup.sh` installs chromium, chromium-driver" if found else None


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read back by console_errors
    driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER) or CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """What the page said at level SEVERE since the last call: script errors, failed loads (a missing image or
    style sheet is a console error too)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def file_of(url: str) -> tuple[Path, str]:
    """A file:// URL as (the file, its fragment)."""
    parts = urlsplit(url)
    assert parts.scheme == "file", f"{url} is not a file of the site"
    return Path(unquote(parts.path)), unquote(parts.fragment)


def outside(url: str) -> bool:
    """A link a reader follows out of the site (https:, mailto:): fine in prose, never followed by the test."""
    return urlsplit(url).scheme in ("http", "https", "mailto")


def screenshot(driver, path: Path) -> Path:
    """The whole page, not only the window: the window grows to the page's height (at most 6000 px)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 6000))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    return path
