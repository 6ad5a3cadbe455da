"""The viewer in a real browser: Playwright driving Debian's chromium (``make test-browser``).

Playwright's own browser download is not reachable from our machines, so the system chromium
is used through ``executable_path`` (``DESERTMIND_CHROMIUM`` overrides where it is).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright import sync_api

from desertmind.app.viewer import launch
from desertmind.cli.main import main
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
def browser_page(tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
        browser.close()


def test_upload_shows_the_overlay_and_the_legend(app_url, browser_page, synth_root):
    page = browser_page
    page.goto(app_url)
    image = next((synth_root / "val" / "Color_Images").iterdir())
    page.locator("#dm-input input[type=file]").set_input_files(str(image))
    overlay = page.locator("#dm-overlay img")
    overlay.wait_for(state="visible", timeout=60_000)
    size = overlay.evaluate("img => [img.naturalHeight, img.naturalWidth]")
    assert tuple(size) == read_image(image).shape[:2]
    legend = page.locator("#dm-legend")
    sky = legend.locator("tr", has_text="Sky")
    sky.locator("td", has_text="%").wait_for(timeout=30_000)  # shares appear after predicting
    assert legend.locator("tr.dm-legend-row").count() == 10


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
    page.locator("#dm-legend tr", has_text="Sky").locator("td", has_text="%").wait_for(
        timeout=30_000)
