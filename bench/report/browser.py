"""Open a generated page in headless Chromium: the DOM after the inline script ran (its `data-render` record of
what loaded and where) and a screenshot. `python -m bench.report.browser PAGE.html SHOT.png` writes a screenshot
(reports/<suite>/index.png is made this way)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

WINDOW = (1280, 3200)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(page: Path, extra: list[str], fragment: str = "", window=WINDOW, timeout: float = 60) -> str:
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    url = Path(page).resolve().as_uri() + fragment
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
           f"--window-size={window[0]},{window[1]}", "--virtual-time-budget=5000", *extra, url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"chromium failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def dump_dom(page: Path, fragment: str = "", window=WINDOW) -> str:
    return _run(page, ["--dump-dom"], fragment, window)


def screenshot(page: Path, png: Path, window=WINDOW) -> Path:
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(page, [f"--screenshot={png}"], "", window)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot {png}")
    return png


def render_record(dom: str) -> dict[str, str]:
    """The page script's `data-render` record as a dict (img:<src> keys hold 'x,y,w,h/naturalWidth')."""
    start = dom.find('data-render="')
    if start < 0:
        return {}
    text = dom[start + len('data-render="') : dom.index('"', start + len('data-render="'))]
    return dict(p.split("=", 1) for p in text.split(";") if "=" in p)


if __name__ == "__main__":
    page, png = Path(sys.argv[1]), Path(sys.argv[2])
    print(screenshot(page, png))
