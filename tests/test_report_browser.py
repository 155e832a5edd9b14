"""The demo's ``snakemake --report`` HTML in a real browser (issue 13): Debian's Chromium,
headless, driven by mouse clicks through the DevTools protocol (tests/browser.py, which
installs Chromium with apt-get when it is missing).

The reader's path through the report, clicked: Workflow and Statistics (the page's Vega
charts), then every result category, every entry's info panel and its eye button. What
they should see, checked in the live page:

- every table and figure of the demo is an entry: the outputs that the rules mark with
  ``report()`` (read from the rules, tests/report_outputs.py) and that the demo wrote;
  each under its rule's category, with its rule's caption (the .rst file, rendered);
- a figure opens as an image whose bytes are the PNG on disk and whose pixels on the
  screen are that PNG's (screenshot compared with the file);
- a table's eye button hands over the very bytes of the file on disk (Snakemake's
  report has no in-page view for CSV or Markdown: it offers them as downloads);
- the page's own scripts load and run: the last inline script ran (it hides the loading
  screen), and there is no uncaught exception, no console.error, no error log entry, no
  failed load, and no request for anything but the report file and data: URIs (the
  report is self-contained; on this closed network any request out would fail);
- screenshots are real renders (their size, many colours, not one flat colour).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from browser import BrowserUnavailable, Chromium, chromium_version, ensure_chromium
from report_outputs import report_outputs

# slow: the demo run, and Chromium installed with apt-get when missing (like the SLURM tests)
pytestmark = pytest.mark.slow

DEMO_CONFIG = "configs/demo.yaml"
FIGURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".svg"}  # Snakemake's report shows these inline
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}  # compared pixel by pixel with the screen
FRAME_SUFFIXES = {".html", ".pdf"}  # shown in an <iframe>: no check written for these yet
WIDTH, HEIGHT = 1400, 900


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium():
    """Path of Debian's Chromium, installed with apt-get if missing (once)."""
    try:
        path, seconds = ensure_chromium()
    except BrowserUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Chromium for the report test: {e}")
        pytest.skip(str(e))
    print(f"\n{chromium_version(path)}; apt-get install: {seconds:.1f} s")
    return path


@pytest.fixture(scope="module")
def demo_report(local_demo, tmp_path_factory):
    """The report of the shared demo run, built here into a file of this module's own (so
    that nothing depends on test_demo_end_to_end having run first)."""
    from test_pipeline import snakemake

    out = tmp_path_factory.mktemp("report_browser") / "report.html"
    t0 = time.monotonic()
    snakemake("--configfile", DEMO_CONFIG, "--report", str(out), cwd=local_demo)
    print(f"\nsnakemake --report: {time.monotonic() - t0:.1f} s, {out.stat().st_size / 1e6:.1f} MB")
    return local_demo, out


# --------------------------------------------------------------------------- helpers


def _js(value) -> str:
    return json.dumps(value)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _letters(text: str) -> str:
    """The text without any whitespace (the DOM's innerText and a tag-stripped HTML body
    space inline elements differently)."""
    return re.sub(r"\s+", "", text)


def rendered_caption(rst_file: Path) -> str:
    """The caption's text as Snakemake shows it: the .rst rendered by docutils to HTML
    (as ``snakemake.report`` does), tags dropped, whitespace collapsed. A caption with
    Jinja templating is compared up to its first template tag only."""
    from docutils.core import publish_parts

    text = rst_file.read_text()
    cut = min((i for i in (text.find("{{"), text.find("{%")) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    with warnings.catch_warnings():  # Snakemake's own call; docutils 0.22 flags its argument
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        body = publish_parts(text, writer_name="html")["body"]
    return _norm(html.unescape(re.sub(r"<[^>]+>", " ", body)))


def data_uri_bytes(uri: str) -> bytes:
    head, _, payload = uri.partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), head[:100]
    return base64.b64decode(payload)


def assert_real_render(png: Path, min_colours: int = 16) -> Image.Image:
    """A screenshot of the page, not a blank or flat one."""
    im = Image.open(png).convert("RGB")
    assert im.size == (WIDTH, HEIGHT), im.size
    colours = im.getcolors(maxcolors=1 << 16)
    n = len(colours) if colours is not None else 1 << 16
    assert n >= min_colours, f"{png.name}: only {n} colours"
    assert max(ImageStat.Stat(im).stddev) > 10, f"{png.name}: nearly one flat colour"
    return im


# JS locators (the report's React markup, Snakemake 9): the navbar is the outer <nav>,
# its breadcrumbs an <ol> in an inner <nav>, its menus <ul><li><a>, a category's entries
# the rows of a <table>, each with a group of two buttons: eye (view) and info.
MENU_ITEM = "[...document.querySelectorAll('#app nav ul > li > a')].find(a => a.innerText.trim() === {})"
HOME = "document.querySelector('#app nav ol li a')"
ROWS = "document.querySelectorAll('#app nav table tbody tr')"
ROW_BUTTON = ROWS + "[{}].querySelectorAll('td:last-child [role=group] > a')[{}]"
INFO_PATH = "(document.querySelector('#app nav ol li.grow') || {innerText: ''}).innerText.trim()"
CRUMBS = ("[...document.querySelectorAll('#app nav ol li')].map(li => li.textContent.trim())"
          ".filter(t => t)")
# the menu's result categories: the items after its "Results" heading, or one "Results"
# item when there is a single category; a category's subcategories: its menu items
MENU_LABELS = "[...document.querySelectorAll('#app nav ul > li > a')].map(a => a.textContent.trim())"
RESULT_MENU = """(() => {
    const items = [...document.querySelectorAll('#app nav ul > li')];
    const i = items.findIndex(li => !li.querySelector('a') && li.textContent.trim() === 'Results');
    if (i < 0) return items.some(li => li.querySelector('a') && li.textContent.trim() === 'Results')
        ? ['Results'] : [];
    return items.slice(i + 1).map(li => li.textContent.trim());
})()"""
INFO_SECTION = """(() => {{
    const items = [...document.querySelectorAll('#app nav ul > li')];
    const i = items.findIndex(li => li.innerText.trim().toUpperCase() === {});
    return i >= 0 && items[i + 1] ? items[i + 1].innerText : null;
}})()"""
INFO_EYE = """(() => {
    const items = [...document.querySelectorAll('#app nav ul > li')];
    const i = items.findIndex(li => li.innerText.trim().toUpperCase() === 'PATH');
    return i >= 0 ? items[i + 1].querySelector('a') : null;
})()"""
CONTENT_IMG = "[...document.querySelectorAll('#app img')].filter(i => !i.closest('nav'))[0]"
IMG_STATE = f"""(() => {{
    const img = {CONTENT_IMG};
    if (!img || !img.complete || !img.naturalWidth) return null;
    const r = img.getBoundingClientRect();
    return {{fingerprint: img.src.length + ':' + img.src.slice(-64), width: img.naturalWidth,
             height: img.naturalHeight, box: [r.x, r.y, r.width, r.height]}};
}})()"""


class ReportReader:
    """Clicks through the report like a reader, recording what each entry shows."""

    def __init__(self, browser: Chromium, shots: Path, downloads: Path):
        self.b, self.shots, self.downloads = browser, shots, downloads
        self.n_shots = 0
        self.img_fingerprint = None

    def shot(self, name: str, settle: bool = False) -> Path:
        """A screenshot; with ``settle``, taken again until two in a row are the same
        (Chromium paints a scaled image fast first, then resampled: a screenshot between the
        two differs from the PNG by its filter, not by its content; up to 5 s)."""
        self.n_shots += 1
        path = self.shots / f"{self.n_shots:02d}-{re.sub(r'[^A-Za-z0-9.]+', '_', name)}.png"
        before = self.b.screenshot(path).read_bytes()
        for _ in range(25 if settle else 0):
            self.b.pump(0.2)
            now = self.b.screenshot(path).read_bytes()
            if now == before:
                break
            before = now
        return path

    def home(self) -> None:
        self.b.click_element(HOME, "home breadcrumb")
        self.b.wait_for(f"{MENU_LABELS}.includes('Statistics')", what="the menu")

    def open_category(self, label: str) -> list[str]:
        """From anywhere: home, then the category's menu item. Returns the labels of its
        subcategories, or [] when it has one (then its entries are listed at once)."""
        self.home()
        self.b.click_element(MENU_ITEM.format(_js(label)), f"menu item {label}")
        listing = self.b.wait_for(
            f"""(() => {{
                if ({ROWS}.length) return {{subcategories: []}};
                const l = {MENU_LABELS};
                return l.length && !l.includes('Statistics') ? {{subcategories: l}} : null;
            }})()""", what=f"the entries or subcategories of {label}")
        return listing["subcategories"]

    def open_list(self, label: str, subcategory: str | None) -> int:
        """From anywhere: home, the category, its subcategory; return the number of rows."""
        self.open_category(label)
        if subcategory is not None:
            self.b.click_element(MENU_ITEM.format(_js(subcategory)), f"subcategory {subcategory}")
        return self.b.wait_for(f"{ROWS}.length", what=f"the entries of {label}/{subcategory}")

    def open_info(self, row: int) -> dict:
        self.b.click_element(ROW_BUTTON.format(row, 1), f"info button of row {row}")
        self.b.wait_for(INFO_SECTION.format(_js("SNAKEMAKE RULE")), what="the result info panel")
        return {
            "path": self.b.evaluate(INFO_PATH),
            "crumbs": self.b.evaluate(CRUMBS),
            "caption": _norm(self.b.evaluate(INFO_SECTION.format(_js("DESCRIPTION"))) or ""),
            "rule": _norm(self.b.evaluate(INFO_SECTION.format(_js("SNAKEMAKE RULE"))) or ""),
        }

    def view_figure(self, path: str) -> dict:
        """Click the info panel's eye button; wait for the new image; return its state."""
        self.b.click_element(INFO_EYE, f"eye button of {path}")
        prev = self.img_fingerprint
        state = self.b.wait_for(
            f"(() => {{ const s = {IMG_STATE}; return s && s.fingerprint !== {_js(prev)} ? s : null; }})()",
            what=f"the image of {path}")
        self.img_fingerprint = state["fingerprint"]
        state["src"] = self.b.evaluate(f"{CONTENT_IMG}.src")
        self.b.pump(0.3)  # let it paint
        return state

    def download(self, path: str) -> bytes:
        """Click the info panel's eye button of a table; return the bytes Chromium saved."""
        self.b.click_element(INFO_EYE, f"eye button of {path}")
        begin = self.b.wait_event("Browser.downloadWillBegin")["params"]
        while True:
            p = self.b.wait_event("Browser.downloadProgress")["params"]
            if p["guid"] == begin["guid"] and p["state"] != "inProgress":
                break
        assert p["state"] == "completed", f"download of {path}: {p}"
        return (self.downloads / begin["guid"]).read_bytes()


# --------------------------------------------------------------------------- tests


def test_the_page_checks_catch_a_broken_page(chromium, tmp_path):
    """The error collection can fail: an uncaught exception, a console.error, a missing
    script, a request out of the page are each caught; a clean page has none."""
    clean = tmp_path / "clean.html"
    clean.write_text("<!doctype html><title>ok</title><p id=p>fine</p>"
                     "<script>document.getElementById('p').textContent = 'ran';</script>")
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!doctype html><title>broken</title><p>broken</p>"
        "<script src='missing.js'></script>"
        "<img src='http://fisherlab.invalid/x.png'>"
        "<script>console.error('boom from the page');</script>"
        "<script>throw new Error('uncaught from the page');</script>")
    with Chromium(chromium, WIDTH, HEIGHT) as b:
        b.navigate(clean.as_uri())
        assert b.wait_for("document.getElementById('p').textContent === 'ran'")
        b.pump(0.5)
        assert b.log.errors() == []
    with Chromium(chromium, WIDTH, HEIGHT) as b:
        b.navigate(broken.as_uri())
        b.pump(1.0)
        errors = "\n".join(b.log.errors())
    assert "uncaught from the page" in errors, errors
    assert "boom from the page" in errors, errors
    assert "missing.js" in errors and "ERR_FILE_NOT_FOUND" in errors, errors
    assert "fisherlab.invalid" in errors, errors


def test_demo_report_renders_every_table_and_figure_in_chromium(chromium, demo_report,
                                                                 tmp_path):
    root, report = demo_report
    flagged = report_outputs(root, DEMO_CONFIG)
    expected = {p: v for p, v in flagged.items() if (root / p).exists()}
    figures = {p for p in expected if Path(p).suffix in FIGURE_SUFFIXES}
    tables = set(expected) - figures
    assert figures and tables, f"the demo wrote no report() figure or no table: {sorted(flagged)}"

    shots, downloads = tmp_path / "shots", tmp_path / "downloads"
    shots.mkdir()
    downloads.mkdir()
    t0 = time.monotonic()
    seen: dict[str, dict] = {}
    with Chromium(chromium, WIDTH, HEIGHT) as b:
        b.send("Browser.setDownloadBehavior", {
            "behavior": "allowAndName", "downloadPath": str(downloads), "eventsEnabled": True},
            session=False)
        b.navigate(report.as_uri())
        t_load = time.monotonic() - t0
        # the page's own scripts ran to the last one, and React rendered the app
        assert b.wait_for("document.querySelector('#loading-screen').style.display === 'none'"
                          " && document.querySelectorAll('#app nav').length > 0",
                          what="the report's scripts and its app")
        r = ReportReader(b, shots, downloads)

        # the Vega charts: the rule graph (landing view), Statistics (runtimes, timeline)
        b.click_element(MENU_ITEM.format(_js("Statistics")), "Statistics")
        b.wait_for("document.querySelector('#runtimes canvas, #runtimes svg')"
                   " && document.querySelector('#timeline canvas, #timeline svg')",
                   what="the Statistics charts")
        b.pump(0.3)
        assert_real_render(r.shot("statistics"))
        b.click_element(MENU_ITEM.format(_js("Workflow")), "Workflow")
        b.wait_for("document.querySelector('#rulegraph canvas, #rulegraph svg')",
                   what="the rule graph")
        b.pump(0.3)
        assert_real_render(r.shot("workflow"))

        # every result the menu offers: each category, each subcategory, each entry
        r.home()
        menu = b.evaluate(RESULT_MENU)
        assert menu, "the report's menu lists no results"
        for label in menu:
            for sub in r.open_category(label) or [None]:
                n_rows = r.open_list(label, sub)
                for row in range(n_rows):
                    if row:
                        assert r.open_list(label, sub) == n_rows
                    info = r.open_info(row)
                    path = info["path"]
                    assert path not in seen, f"{path} listed twice"
                    assert Path(path).suffix not in FRAME_SUFFIXES, (
                        f"{path}: the report shows it in an iframe; this test has no check for it")
                    if Path(path).suffix in FIGURE_SUFFIXES:
                        info["image"] = r.view_figure(path)
                        info["shot"] = r.shot(path, settle=True)
                        info["image"]["box"] = b.evaluate(IMG_STATE)["box"]  # where it settled
                    else:
                        info["shot"] = r.shot(path)
                        info["download"] = r.download(path)
                    seen[path] = info
        b.pump(1.0)  # late errors or requests
        log = b.log
    t_browse = time.monotonic() - t0
    print(f"\nreport page load {t_load:.1f} s; clicking through {len(seen)} entries, "
          f"{r.n_shots} screenshots: {t_browse:.1f} s")
    console_warnings = [m for t, m in log.console if t == "warning"]
    print(f"console warnings (not errors): {console_warnings}")

    # the page's own scripts: no error of any kind, nothing requested from outside
    assert log.errors() == [], "\n".join(log.errors())
    outside = [u for u in log.requests
               if not (u.split("#")[0] == report.as_uri() or u.startswith(("data:", "blob:", "about:")))]
    assert outside == [], f"the self-contained report requested {outside}"

    # every table and figure the demo wrote is an entry, under its rule's category
    assert sorted(seen) == sorted(expected), (
        f"missing from the report: {sorted(set(expected) - set(seen))}; "
        f"not from a report() output: {sorted(set(seen) - set(expected))}")
    for path, info in seen.items():
        want = expected[path]
        for key in ("category", "subcategory"):  # shown in the breadcrumbs of its info panel
            if want[key] and "{" not in want[key]:  # (one templated by wildcards: not here)
                assert want[key] in info["crumbs"], (path, key, want[key], info["crumbs"])
        assert info["rule"] == want["rule"], (path, info["rule"], want["rule"])
        assert want["caption"], f"{path}: its rule's report() has no caption"
        caption = rendered_caption(Path(want["caption"]))
        assert caption and _letters(info["caption"]).startswith(_letters(caption)), (
            f"{path}: caption shown {info['caption']!r}, its rule's {caption!r}")
        on_disk = (root / path).read_bytes()
        if path in figures:
            img = info["image"]
            assert data_uri_bytes(img["src"]) == on_disk, f"{path}: the image is not the file"
            if Path(path).suffix in RASTER_SUFFIXES:
                with Image.open(root / path) as png:
                    assert (img["width"], img["height"]) == png.size, (path, img, png.size)
                    figure = png.convert("RGB")
                _assert_figure_on_screen(path, info["shot"], figure, img["box"])
            else:
                assert_real_render(info["shot"])
        else:
            assert hashlib.sha256(info["download"]).digest() == hashlib.sha256(on_disk).digest(), (
                f"{path}: the report's download differs from the file")
            assert_real_render(info["shot"])
    if os.environ.get("FISHERLAB_REPORT_SHOTS"):  # keep the screenshots (docs/report.png)
        keep = Path(os.environ["FISHERLAB_REPORT_SHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        for png in shots.iterdir():
            shutil.copy(png, keep / png.name)
    print(f"screenshots: {shots}")


def _assert_figure_on_screen(path: str, shot: Path, figure: Image.Image, box) -> None:
    """The screenshot shows the figure: the visible part of the image's box against the PNG
    scaled to the size it is drawn at, both averaged over 4x4-pixel blocks (so that the
    browser's and Pillow's resampling filters do not count), by the mean absolute
    difference per channel. The same comparison with the PNG mirrored left to right is
    the control: it must differ several times more."""
    screen = assert_real_render(shot)
    x, y, w, h = box
    assert w > 100 and h > 100, f"{path}: drawn at {w}x{h}"
    left, top = max(0, round(x)), max(0, round(y))
    right, bottom = min(WIDTH, round(x + w)), min(HEIGHT, round(y + h))
    assert right - left > 100 and bottom - top > 100, f"{path}: not on screen ({box})"
    crop = (left - round(x), top - round(y), right - round(x), bottom - round(y))
    block = ((right - left) // 4, (bottom - top) // 4)

    def difference(fig: Image.Image) -> float:
        drawn = fig.resize((round(w), round(h)), Image.BOX).crop(crop).resize(block, Image.BOX)
        seen = screen.crop((left, top, right, bottom)).resize(block, Image.BOX)
        return max(ImageStat.Stat(ImageChops.difference(drawn, seen)).mean)

    same, mirrored = difference(figure), difference(figure.transpose(Image.FLIP_LEFT_RIGHT))
    print(f"{path}: drawn {w:.0f}x{h:.0f} of {figure.size}; difference from the PNG "
          f"{same:.2f}/255, from the PNG mirrored {mirrored:.2f}/255")
    assert same < 4 and mirrored > 3 * same, (
        f"{path}: the screen differs from the PNG by {same:.2f}/255 per channel "
        f"(mirrored: {mirrored:.2f})")
