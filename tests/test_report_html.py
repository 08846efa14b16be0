"""Every generated index.html opened in headless Chromium (Debian's chromium package): the inline script ran,
the leaderboard sorts, every figure and grid decoded (naturalWidth > 0), and the screenshot shows the
leaderboard and the figures (their regions are not blank)."""

import pytest
from matplotlib.image import imread
from test_report import built, store  # noqa: F401  (fixtures)

from bench.report import browser

pytestmark = pytest.mark.skipif(
    browser.chromium() is None, reason="chromium not installed (apt-get install chromium)"
)


def _region_has_content(shot, rect: str) -> bool:
    x, y, w, h = (int(v) for v in rect.split(","))
    H, W = shot.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 - x0 < 20 or y1 - y0 < 20:
        return False
    region = shot[y0:y1, x0:x1, :3]
    # rendered text/lines: many distinct colours and clear contrast, not a flat fill
    return (
        float(region.std()) > 0.05 and len({tuple(p) for p in region[::4, ::4].reshape(-1, 3).tolist()}) > 8
    )


def test_every_page_renders(built, tmp_path):  # noqa: F811
    pages = sorted(built.glob("*/index.html"))
    assert [p.parent.name for p in pages] == ["boot", "toy"]
    for page in pages:
        rec = browser.render_record(browser.dump_dom(page))
        assert rec.get("js") == "1", page
        assert int(rec["rows"]) == 3 and int(rec["images"]) >= 7, rec  # 4 figures + 3 grids
        assert rec["loaded"] == rec["images"], rec  # every <img> decoded
        shot = imread(browser.screenshot(page, tmp_path / f"{page.parent.name}.png"))
        assert _region_has_content(shot, rec["leaderboard"]), rec["leaderboard"]
        imgs = {k[4:]: v for k, v in rec.items() if k.startswith("img:")}
        figs = [s for s in imgs if s.startswith("fid_vs_")]
        assert len(figs) == 4
        for src in figs:
            rect, natural = imgs[src].split("/")
            assert int(natural) > 500, src  # a paper-width PNG at 300 dpi
            assert _region_has_content(shot, rect), (page, src, rect)
    # the sortable leaderboard: sort by the last-FID column (index 4), both directions
    toy = built / "toy" / "index.html"
    assert browser.render_record(browser.dump_dom(toy, "#sort=leaderboard:4:asc"))["first"] == "tarflow"
    assert browser.render_record(browser.dump_dom(toy, "#sort=leaderboard:4:desc"))["first"] == "starflow"
    index = browser.dump_dom(built / "index.html")
    assert "toy/index.html" in index and "boot/index.html" in index and 'data-render="js=1' in index


def test_committed_pages_render():
    """The committed reports (reports/<suite>/index.html) render offline: script ran, every image decoded."""
    from pathlib import Path

    pages = sorted((Path(__file__).resolve().parents[1] / "reports").glob("*/index.html"))
    assert pages, "no committed report pages"
    for page in pages:
        rec = browser.render_record(browser.dump_dom(page))
        assert rec.get("js") == "1" and int(rec["rows"]) > 0, (page, rec)
        assert int(rec["images"]) >= 4 and rec["loaded"] == rec["images"], (page, rec)
