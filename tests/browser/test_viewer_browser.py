"""The viewer in a real browser: Playwright driving Debian's chromium (``make test-browser``).

Playwright's own browser download is not reachable from our machines, so the system chromium
is used through ``executable_path`` (``DESERTMIND_CHROMIUM`` overrides where it is).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright import sync_api

from desertmind.app.viewer import launch
from desertmind.cli.main import main
from desertmind.data.classes import CLASS_NAMES, CLASSES
from desertmind.data.imageio import read_image

pytestmark = pytest.mark.browser

#: no background traffic: this machine's network is closed, and a test must not need it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = os.environ.get("DESERTMIND_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("no chromium found: install Debian's chromium (apt-get install chromium) "
                    "or set DESERTMIND_CHROMIUM to a Chromium executable")
    return path


@pytest.fixture(scope="module")
def app_url(synth_root: Path, tmp_path_factory, phase_args):
    logs = tmp_path_factory.mktemp("browser") / "logs"
    assert main(["fit", *phase_args("phase1", synth_root, logs),
                 "--trainer.enable_progress_bar", "false"]) == 0
    page, url = launch(logs / "phase1" / "checkpoints" / "best.ckpt", str(synth_root),
                       block=False)
    yield url
    page.close()


@pytest.fixture
def browser_page(request, tmp_path):
    """A chromium page; when the test ends, a screenshot of it goes to $DESERTMIND_SCREENSHOTS
    (named after the test) or the test's temporary folder."""
    shots = Path(os.environ.get("DESERTMIND_SCREENSHOTS") or tmp_path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
        browser.close()


def _box(locator) -> dict:
    locator.wait_for(state="visible", timeout=60_000)
    return locator.bounding_box()


def _legend(page) -> list[tuple[str, float]]:
    """The merged legend's rows as shown: (class, pixel share %)."""
    labels = page.locator("#dm-classes label").all_inner_texts()
    return [(name.strip(), float(share.rstrip("%"))) for name, share in
            (label.split("·") for label in labels)]


def test_the_header_names_the_network_its_size_and_its_score(app_url, browser_page):
    page = browser_page
    page.goto(app_url)
    header = page.locator("#dm-header").inner_text(timeout=30_000)
    assert "tiny" in header and "mobilenet_v3_large" in header  # the stand-in's checkpoint
    assert "48x32 (width x height)" in header  # the checkpoint's evaluation size, W x H
    assert re.search(r"val/mIoU \d\.\d{3} \(epoch \d+\)", header), header


def test_upload_shows_image_and_prediction_side_by_side_drawn_large(app_url, browser_page,
                                                                    synth_root):
    page = browser_page
    page.goto(app_url)
    image = next((synth_root / "val" / "Color_Images").iterdir())
    page.locator("#dm-input input[type=file]").set_input_files(str(image))
    overlay, original = page.locator("#dm-overlay img"), page.locator("#dm-original img")
    shown, pred = _box(original), _box(overlay)
    assert abs(shown["y"] - pred["y"]) < 5 and shown["x"] + shown["width"] <= pred["x"] + 1
    size = overlay.evaluate("img => [img.naturalHeight, img.naturalWidth]")
    assert tuple(size) == read_image(image).shape[:2]  # the image's own pixels...
    drawn = overlay.evaluate("img => { const r = img.getBoundingClientRect(); "
                             "return Math.min(r.width / img.naturalWidth, "
                             "r.height / img.naturalHeight); }")
    assert drawn >= 3  # ...drawn several times larger (80x48 synthetic scenes)


def test_one_legend_sorted_by_share_is_also_the_toggles(app_url, browser_page, synth_root):
    page = browser_page
    page.goto(app_url)
    image = next((synth_root / "val" / "Color_Images").iterdir())
    page.locator("#dm-input input[type=file]").set_input_files(str(image))
    page.locator("#dm-classes label", has_text="%").first.wait_for(timeout=60_000)
    legend = _legend(page)
    assert sorted(n for n, _ in legend) == sorted(CLASS_NAMES)
    assert [s for _, s in legend] == sorted((s for _, s in legend), reverse=True)
    assert page.locator("#dm-legend").count() == 0  # no second legend
    # each toggle carries its class's colour
    top = legend[0][0]
    swatch = page.locator("#dm-classes label", has_text=top).locator("span").first.evaluate(
        "el => getComputedStyle(el, '::before').backgroundColor")
    assert swatch == "rgb({}, {}, {})".format(*CLASSES[CLASS_NAMES.index(top)].color)
    # unticking the most common class re-draws the overlay without it
    before = page.locator("#dm-overlay img").get_attribute("src")
    page.locator("#dm-classes label", has_text=top).click()
    page.wait_for_function(
        "src => document.querySelector('#dm-overlay img').getAttribute('src') !== src",
        arg=before, timeout=30_000)


def test_a_file_that_is_not_an_image_gets_a_message_in_the_page(app_url, browser_page,
                                                                tmp_path):
    page = browser_page
    page.goto(app_url)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    page.locator("#dm-input input[type=file]").set_input_files(str(bad))
    page.get_by_text("cannot decode image").first.wait_for(timeout=30_000)


def test_picking_an_image_of_the_split_predicts_it(app_url, browser_page, synth_root):
    page = browser_page
    page.goto(app_url)
    name = sorted(p.stem for p in (synth_root / "val" / "Color_Images").iterdir())[1]
    page.locator("#dm-pick input").click()
    page.get_by_role("option", name=name).click()
    overlay = page.locator("#dm-overlay img")
    overlay.wait_for(state="visible", timeout=60_000)
    size = overlay.evaluate("img => [img.naturalHeight, img.naturalWidth]")
    image = synth_root / "val" / "Color_Images" / f"{name}.png"
    assert tuple(size) == read_image(image).shape[:2]
    page.locator("#dm-classes label", has_text="%").first.wait_for(timeout=30_000)


def test_browse_shows_per_class_iou_and_a_clicked_row(app_url, browser_page):
    page = browser_page
    page.goto(app_url)
    page.get_by_role("tab", name="Browse val").click()
    page.locator("#dm-score").click()
    table = page.locator("#dm-ranking")  # Gradio's grid: cells are data-testid cell-ROW-COL
    table.get_by_test_id("cell-3-1").wait_for(timeout=60_000)  # four images, worst first
    headers = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts()]
    assert headers == ["rank", "image", "mIoU", *CLASS_NAMES]
    cells = [table.get_by_test_id(f"cell-0-{c}").inner_text().strip()
             for c in range(2, 3 + len(CLASS_NAMES))]
    numbers = [c for c in cells if c not in ("", "NaN", "nan")]
    assert numbers and all(re.fullmatch(r"\d(\.\d{1,3})?", n) for n in numbers), numbers
    name = table.get_by_test_id("cell-2-1").inner_text().strip()
    table.get_by_test_id("cell-2-1").click()
    page.locator("#dm-caption", has_text=name).wait_for(timeout=60_000)
    assert "mean IoU" in page.locator("#dm-caption").inner_text()
    assert page.locator("#dm-key .dm-key").count() == len(CLASS_NAMES)  # the colour key


def test_at_1366x768_the_legend_shows_and_a_picked_image_has_its_truth_and_confidence(
        app_url, browser_page, synth_root):
    """A laptop screen: the legend (also the class toggles) is visible without scrolling; a
    picked val image shows its ground truth and per-class IoU; the confidence view redraws
    the prediction."""
    page = browser_page
    page.set_viewport_size({"width": 1366, "height": 768})
    page.goto(app_url)
    legend = _box(page.locator("#dm-classes"))
    assert legend["y"] + legend["height"] <= 768, legend  # whole, above the fold
    name = sorted(p.stem for p in (synth_root / "val" / "Color_Images").iterdir())[0]
    page.locator("#dm-pick input").click()
    page.get_by_role("option", name=name).click()
    page.locator("#dm-truth img").wait_for(state="visible", timeout=60_000)
    page.locator("#dm-errors img").wait_for(state="visible", timeout=60_000)
    ious = page.locator("#dm-sample-iou")
    ious.get_by_text("mean IoU").wait_for(timeout=30_000)
    before = page.locator("#dm-overlay img").get_attribute("src")
    page.locator("#dm-view label", has_text="confidence").click()
    page.wait_for_function(
        "src => document.querySelector('#dm-overlay img').getAttribute('src') !== src",
        arg=before, timeout=30_000)
