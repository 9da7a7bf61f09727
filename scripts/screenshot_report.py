#!/usr/bin/env python
"""Render a drift report and take a full-page PNG screenshot of it with headless Chromium.

    python scripts/screenshot_report.py                      # built-in example data (failing, with trajectory)
    python scripts/screenshot_report.py data.json -o out.png # a real report's data dict saved as JSON
    python scripts/screenshot_report.py --passing --no-trajectory
    python scripts/screenshot_report.py --height 4000        # fixed window instead of the full page

Chromium is not a project dependency; on Debian: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO), str(_REPO / "tests")]  # the package, and the example data kept with the tests

from drift_suite.outputs.report import render_report  # noqa: E402
from report_example import example_report_data  # noqa: E402

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium-like browser, or None."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium_cmd(browser: str, profile: str, *extra: str) -> list[str]:
    cmd = [browser, "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", *extra]
    if os.geteuid() == 0:
        cmd.insert(2, "--no-sandbox")  # Chromium refuses to run as root with its sandbox on
    return cmd


def dump_dom(html: Path, width: int = 1280, browser: str | None = None, timeout: float = 120.0,
             virtual_time_ms: int = 2000) -> str | None:
    """The DOM of ``html`` after Chromium loaded it and ran its scripts (``--dump-dom``), or None without Chromium.

    ``virtual_time_ms`` lets timers and fetches started by scripts settle before the dump.
    """
    browser = browser or find_chromium()
    if browser is None:
        return None
    with tempfile.TemporaryDirectory(prefix="drift-chromium-") as profile:
        cmd = _chromium_cmd(browser, profile, "--dump-dom", f"--virtual-time-budget={virtual_time_ms}",
                            f"--window-size={width},1000", html.resolve().as_uri())
        try:
            return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout).stdout
        except subprocess.TimeoutExpired:
            return None


def measure_height(html: Path, width: int = 1280, browser: str | None = None, timeout: float = 120.0) -> int | None:
    """The page's laid-out height in CSS pixels, or None if it could not be measured.

    Headless ``--screenshot`` only captures the window, so a full-page shot needs the height first. The
    report itself has no scripts; a throw-away copy with a one-line script reports its height via the DOM.
    """
    probe_js = ("<script>document.body.setAttribute('data-page-height',"
                "Math.ceil(document.documentElement.scrollHeight))</script>")
    with tempfile.TemporaryDirectory(prefix="drift-probe-") as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(html.read_text(encoding="utf-8").replace("</body>", probe_js + "</body>"), encoding="utf-8")
        out = dump_dom(probe, width, browser, timeout) or ""
    match = re.search(r'data-page-height="(\d+)"', out)
    return int(match.group(1)) if match else None


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 4000, browser: str | None = None,
               timeout: float = 120.0) -> Path:
    """Screenshot ``html`` into ``png`` at ``width`` × ``height`` CSS pixels; raises if nothing was written."""
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium found; install it with `apt-get install -y chromium`")
    png = png.resolve()
    png.unlink(missing_ok=True)
    # A fresh profile per run: a shared one can be locked by another instance or carry stale state.
    with tempfile.TemporaryDirectory(prefix="drift-chromium-") as profile:
        cmd = _chromium_cmd(browser, profile, f"--screenshot={png}", f"--window-size={width},{height}",
                            html.resolve().as_uri())
        subprocess.run(cmd, check=False, capture_output=True, timeout=timeout)
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot: {' '.join(cmd)}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", help="JSON file with the report data dict (default: built-in example)")
    parser.add_argument("-o", "--output", default="/tmp/report.png", help="PNG to write")
    parser.add_argument("--html", default=None, help="HTML to write (default: next to the PNG)")
    parser.add_argument("--passing", action="store_true", help="example data: a passing run")
    parser.add_argument("--no-trajectory", action="store_true", help="example data: a single checkpoint, no trajectory")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=None,
                        help="window height in CSS px (default: the page's full height, else 4000)")
    args = parser.parse_args(argv)

    if args.data:
        data = json.loads(Path(args.data).read_text(encoding="utf-8"))
    else:
        data = example_report_data(with_trajectory=not args.no_trajectory, failing=not args.passing)
    png = Path(args.output)
    html = render_report(data, Path(args.html) if args.html else png.with_suffix(".html"))
    height = args.height or min(measure_height(html, args.width) or 4000, 20000)
    screenshot(html, png, args.width, height)
    print(f"report: {html}\nscreenshot: {png} ({png.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
