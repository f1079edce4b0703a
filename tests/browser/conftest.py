"""Headless Chromium (Debian's package) driven by Playwright's Python package, which never
downloads a browser of its own: the executable is /usr/bin/chromium (`make system-deps`).

Without Chromium these tests skip, saying why, unless RADFLOW_REQUIRE_BROWSER is set (CI):
then they fail."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("RADFLOW_CHROMIUM", "/usr/bin/chromium"))
# the closed network refuses Chromium's background connections: keep it from trying any
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TABLET = {"width": 1024, "height": 768}  # an iPad-class screen in landscape


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """Skips (or fails, when required) before anything else is started for nothing."""
    if not CHROMIUM.is_file():
        why = f"{CHROMIUM} is missing (Debian package chromium: `make system-deps`)"
        if os.environ.get("RADFLOW_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"browser required (RADFLOW_REQUIRE_BROWSER is set) but {why}")
        pytest.skip(f"{why}; set RADFLOW_REQUIRE_BROWSER=1 to make this a failure")
    return CHROMIUM


@pytest.fixture(scope="module")
def chromium(chromium_path: Path, temporal_address: str) -> Iterator[Any]:
    """One browser per module. Playwright's sync API keeps an asyncio loop running on this
    thread while it is open, so pytest-asyncio can run no async fixture meanwhile: the
    session's Temporal dev server is started before it (hence `temporal_address`), and the
    browser is closed with the module, before any later async test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def assert_screenshot(path: Path, min_width: int) -> None:
    """A real rendering, not a blank or tiny image: wide enough and with enough content that
    compression leaves many bytes (a blank 1024x768 PNG is a few KB)."""
    width, height = png_size(path)
    assert width >= min_width and height >= 300, (path, width, height)
    assert path.stat().st_size > 25_000, f"{path} is suspiciously small ({path.stat().st_size} bytes)"
