"""Headless Chromium (Debian's `chromium`) for looking at the UIs the way a user does: a screenshot
saved with the test output, and the rendered page's DOM to assert on."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import REPO_ROOT, debian_tool

SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"
"""Where the UI screenshots are kept after the run (git-ignored)."""


def chromium() -> str:
    return debian_tool("chromium", "chromium")


def _headless(url: str, *extra: str, width: int, height: int) -> subprocess.CompletedProcess[str]:
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        "--virtual-time-budget=20000",  # let the single-page apps fetch and render
        *extra,
        url,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=180, check=True)


def screenshot(url: str, name: str, width: int = 1400, height: int = 1000) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.unlink(missing_ok=True)
    _headless(url, f"--screenshot={path}", width=width, height=height)
    return path


def rendered_text(url: str) -> str:
    """The page's DOM after its scripts ran."""
    return _headless(url, "--dump-dom", width=1400, height=1000).stdout
