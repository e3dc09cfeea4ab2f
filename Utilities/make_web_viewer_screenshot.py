"""Screenshot of the web viewer for the docs (docs/web_viewer.png), taken in headless Debian chromium.

::

    .venv/bin/python Utilities/make_web_viewer_screenshot.py                    # the shipped default model
    .venv/bin/python Utilities/make_web_viewer_screenshot.py --model FOLDER     # another bundle

Starts ``acat view`` on a free loopback port, opens the demo case (the real head CT with a simulated
LEFT MCA infarct), explains it and saves the whole page once the overlay is shown. Without the shipped
bundle, ``--random`` uses a tiny random-weight bundle: the picture then shows the layout, not a
meaningful explanation (say so wherever it is used). Same browser and flags as the browser test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

import web_browser  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=web_browser.SHIPPED_BUNDLE, help="a model bundle folder")
    parser.add_argument("--random", action="store_true", help="use a tiny random bundle (layout only)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "web_viewer.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="acat-screenshot-") as tmp:
        tmp = Path(tmp)
        from ACATData.phantom.demo import write_demo_case

        image = Path(write_demo_case(tmp / "phantom_case", side="left")["image_path"])
        model = args.model
        if args.random:
            from bundles import make_random_bundle

            model = make_random_bundle(tmp / "random-bundle", size=64, slices=5, steps=3)
        elif not (model / "model.json").is_file():
            parser.error(f"{model} is not a model bundle (use --model FOLDER, or --random for the layout only)")
        with web_browser.viewer_server(model, tmp, extra_args=("--allow-dir", str(image.parent))) as (url, _p, _l):
            with web_browser.chromium_page(tmp / "profile", width=1600, height=1000) as page:
                web_browser.open_and_explain(page, url, image)
                deadline = time.monotonic() + 60
                while web_browser.heat_mask(web_browser.axial_view_pixels(page)).sum() < 50:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(1.0)
                time.sleep(2.0)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
