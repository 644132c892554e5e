"""A picture of the report page, rendered by headless Chromium (Debian's `chromium`, installed with apt-get when
missing, as the online bench installs wrk): proof that the page renders, and a thumbnail to attach elsewhere."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from stack.debian import PackageError, ensure_binary

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


class ScreenshotError(RuntimeError):
    pass


def ensure_chromium() -> str:
    """The path of a Chromium binary, installing Debian's package `chromium` with apt-get if there is none."""
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    try:
        return ensure_binary("chromium", "chromium")
    except PackageError as exc:
        raise ScreenshotError(str(exc)) from exc


def screenshot(page: Path, out: Path, width: int = 1200, height: int = 2400, timeout: float = 120) -> Path:
    """Render `page` (a local HTML file) headless and write a PNG screenshot to `out`."""
    chromium = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                   "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={out}",
                   page.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out.exists():
        raise ScreenshotError(f"chromium failed (exit {done.returncode}): {done.stderr[-1000:]}")
    return out
