"""Draw the ACAT module icon (ACATSlicer/Resources/Icons/ACATSlicer.png, 128 x 128) from shapes.

    python Utilities/make_slicer_icon.py            # rewrite the icon
    python Utilities/make_slicer_icon.py --check    # exit 1 if the committed icon differs

An axial CT slice (skull ring, grey brain) with a heat blob in one hemisphere - the saliency overlay -
and a dashed outline of the same slice beside it, offset: the counterfactual. No text, so the pixels do
not depend on the fonts installed. Testing/test_slicer_module_files.py checks that the committed PNG
is this drawing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
ICON = Path(__file__).resolve().parents[1] / "ACATSlicer" / "Resources" / "Icons" / "ACATSlicer.png"


def draw_icon() -> Image.Image:
    image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    d = ImageDraw.Draw(image)
    d.rounded_rectangle((2, 2, SIZE - 3, SIZE - 3), radius=18, fill=(24, 32, 48, 255))
    # the counterfactual: a dashed outline of the same slice, behind and to the right
    for angle in range(0, 360, 24):
        d.arc((40, 18, 120, 110), angle, angle + 12, fill=(120, 170, 220, 255), width=3)
    # the CT slice: skull ring and brain
    d.ellipse((10, 22, 88, 114), fill=(235, 235, 235, 255))
    d.ellipse((16, 28, 82, 108), fill=(120, 120, 120, 255))
    d.line((49, 30, 49, 106), fill=(95, 95, 95, 255), width=2)  # the midline
    # the saliency: a radial heat blob (red rim -> yellow -> white core) in the image's right hemisphere,
    # the patient's left in radiological convention
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    r = np.hypot(xx - 64, yy - 62) / 16.0
    heat = np.clip(1.0 - r, 0.0, 1.0)
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = np.clip(heat * 2.0, 0, 1) * 255
    rgba[..., 2] = np.clip(heat * 3.0 - 2.0, 0, 1) * 255
    rgba[..., 3] = np.where(r < 1.0, 90 + 165 * heat, 0)
    overlay = Image.fromarray(rgba, "RGBA")
    return Image.alpha_composite(image, overlay)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed icon instead of writing")
    args = parser.parse_args(argv)
    icon = draw_icon()
    if args.check:
        same = ICON.is_file() and np.array_equal(np.asarray(Image.open(ICON).convert("RGBA")), np.asarray(icon))
        print("icon is up to date" if same else f"{ICON} differs from the drawing; rerun without --check")
        return 0 if same else 1
    ICON.parent.mkdir(parents=True, exist_ok=True)
    tmp = ICON.with_suffix(".partial.png")
    icon.save(tmp, optimize=True)
    tmp.replace(ICON)
    print(f"wrote {ICON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
