"""Refresh the README's pictures from a trained checkpoint: ``make screenshots``.

``viewer.png`` is the viewer (``desertmind app``) in Debian's chromium, driven by Playwright,
after picking one image of the split; ``report.png`` is the training curves that ``desertmind
report`` drew. Both are written small enough for a code host to show (``--width``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import cv2

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]


def _shrunk(image, width: int):
    h, w = image.shape[:2]
    if w <= width:
        return image
    return cv2.resize(image, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


def viewer_screenshot(ckpt: Path, root: Path, out: Path, width: int) -> Path:
    from playwright import sync_api

    from desertmind.app.viewer import launch

    chromium = os.environ.get("DESERTMIND_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        sys.exit("no chromium: apt-get install chromium, or set DESERTMIND_CHROMIUM")
    page_app, url = launch(ckpt, str(root), block=False)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.locator("#dm-pick input").click()
            page.get_by_role("option").nth(1).click()
            page.locator("#dm-classes label", has_text="%").first.wait_for(timeout=120_000)
            page.locator("#dm-overlay img").wait_for(state="visible", timeout=120_000)
            # Gradio fades what a request will update until every status tracker is hidden
            page.wait_for_function("() => [...document.querySelectorAll("
                                   "'[data-testid=status-tracker]')].every("
                                   "e => e.classList.contains('hide'))", timeout=120_000)
            page.wait_for_timeout(500)
            raw = out.with_suffix(".raw.png")
            page.screenshot(path=str(raw), full_page=True)
            browser.close()
    finally:
        page_app.close()
    image = cv2.imread(str(raw))
    raw.unlink()
    cv2.imwrite(str(out), _shrunk(image, width), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a checkpoint to show")
    parser.add_argument("--root", type=Path, required=True, help="its dataset root")
    parser.add_argument("--report", type=Path, required=True,
                        help="a `desertmind report --out` folder (its curves.png)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    parser.add_argument("--width", type=int, default=1000, help="width of the pictures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    curves = cv2.imread(str(args.report / "curves.png"))
    if curves is None:
        sys.exit(f"{args.report / 'curves.png'}: not found; run desertmind report first")
    cv2.imwrite(str(args.out / "report.png"), _shrunk(curves, args.width),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    viewer_screenshot(args.ckpt, args.root, args.out / "viewer.png", args.width)
    print(f"wrote {args.out / 'viewer.png'} and {args.out / 'report.png'}")


if __name__ == "__main__":
    main()
