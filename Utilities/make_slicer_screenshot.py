"""Picture of the Slicer module's results for the docs (docs/slicer_results.png), rendered headless.

::

    .venv/bin/python Utilities/make_slicer_screenshot.py                    # the module's default model
    .venv/bin/python Utilities/make_slicer_screenshot.py --model FOLDER     # another bundle

No Slicer GUI and no OpenGL: with the slicer-core wheel, a scene is set up as the Slicer application
does (Testing/slicer_scene.py), the demo case (the real Cranium head CT with a simulated LEFT MCA
infarct, as a DICOM series) is loaded by Slicer's volumes logic, and the real Explain runs through
ACATSlicerLib's `ExplainController` - the module's logic - with the panel's default settings and the
model the module selects first (the shipped brain-stroke-phantom bundle). The results are shown as the
module shows them (saliency over the CT, top 5%; the counterfactual beside it); the picture is Slicer's
own composited slice images (`vtkMRMLSliceLogic.GetImageDataConnection`) of the axial view through the
strongest part of the saliency and of the counterfactual view, side by side with a caption. It is not
a screenshot of the desktop application.

The CT is shown with a brain window (level 40, width 80 HU), as a user would pick a brain preset; the
counterfactual gets the same grey levels (the module copies them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "Testing", ROOT / "ACATSlicer", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

CAPTION = "Slicer slice views (headless render): CT + saliency | counterfactual \u2014 research use only"
BRAIN_WINDOW = (40.0, 80.0)  # level, width (HU)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # Debian's fonts-dejavu-core


def _slice_image(logic) -> np.ndarray:
    """Slicer's composited RGBA slice image as (H, W, 4) uint8, top row first (no refit: the view is set)."""
    from vtk.util.numpy_support import vtk_to_numpy

    logic.GetSliceNode().UpdateMatrices()
    connection = logic.GetImageDataConnection()
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(connection.GetIndex())
    w, h, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.flipud(pixels).copy()  # VTK's first row is the bottom one


def _focus_point(result, percentile: float) -> np.ndarray:
    """RAS point of the axial slice with most supra-threshold saliency inside the body, at its weighted
    centre there (as the web viewer focuses: `display.overlayFocus`)."""
    from ACATSlicerLib import display

    focus = display.overlayFocus(result.saliency, result.inputNode, percentile)
    if focus is None:
        raise RuntimeError("the saliency map is empty inside the body: nothing to show")
    return focus


def _compose(left: np.ndarray, right: np.ndarray, caption: str, labels: tuple[str, str]):
    from PIL import Image, ImageDraw, ImageFont

    gap, pad, caption_h = 8, 8, 34
    h, w = left.shape[:2]
    canvas = Image.new("RGB", (2 * w + gap + 2 * pad, h + 2 * pad + caption_h), (24, 24, 24))
    try:  # a font with the em dash (Pillow's built-in one lacks it)
        font, small = (ImageFont.truetype(FONT, size) for size in (16, 14))
    except OSError:
        font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=14)
        caption = caption.replace("\u2014", "-")
    draw = ImageDraw.Draw(canvas)
    for n, (pixels, label) in enumerate(zip((left, right), labels)):
        x = pad + n * (w + gap)
        canvas.paste(Image.fromarray(np.ascontiguousarray(pixels[..., :3])), (x, pad))
        draw.text((x + 6, pad + 4), label, fill=(255, 255, 255), font=small)
    draw.text((pad, h + 2 * pad + 6), caption, fill=(230, 230, 230), font=font)
    return canvas


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a model bundle folder (default: the module's first choice, the shipped model)")
    parser.add_argument("--size", type=int, default=480, help="slice view size in pixels (square)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for the Explain")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "slicer_results.png")
    args = parser.parse_args(argv)

    from slicer_scene import HeadlessScene

    from ACATData.phantom.demo import write_demo_case
    from ACATLogic.options import ExplainOptions
    from ACATSlicerLib import layout
    from ACATSlicerLib.controller import ExplainController
    from ACATSlicerLib.request import ExplainRequest
    from ACATSlicerLib.runner import SUCCEEDED

    with tempfile.TemporaryDirectory(prefix="acat-slicer-screenshot-") as tmp:
        tmp = Path(tmp)
        image = Path(write_demo_case(tmp / "demo", side="left")["image_path"])
        headless = HeadlessScene(sliceSize=args.size)
        try:
            scene = headless.scene
            first = sorted(image.glob("*.dcm"))[0]  # the archetype: the reader gathers the whole series
            ct = headless.volumes.AddArchetypeVolume(str(first), "ACAT demo head CT", 0)
            if ct is None:
                raise RuntimeError(f"Slicer's volumes logic could not read the DICOM series in {image}")
            level, width = BRAIN_WINDOW
            ct.GetDisplayNode().SetAutoWindowLevel(False)
            ct.GetDisplayNode().SetWindowLevel(width, level)

            controller = ExplainController(scene, workRoot=tmp)
            if args.model is None:
                choices = controller.modelChoices()
                if not choices:
                    parser.error("no bundled model found (Resources/Models); use --model FOLDER")
                model = str(choices[0].path)  # what the panel's model selector shows first
            else:
                model = str(controller.addModel(args.model).path)
            options = layout.ViewOptions()  # the panel's defaults: opacity 0.5, percentile 95, side by side
            controller.start(ct, ExplainRequest(model, ExplainOptions()), options)  # panel defaults otherwise
            outcome = controller.wait(args.timeout)
            if outcome.state != SUCCEEDED:
                raise RuntimeError(f"the Explain {outcome.state}: {outcome.errorMessage}")
            result = controller.result
            counterfactual = result.shownCounterfactual()
            if counterfactual is None:
                raise RuntimeError(f"the model {model} gave no counterfactual to show")

            focus = _focus_point(result, options.percentile)
            images = []
            for name in (layout.LEFT_VIEW, layout.RIGHT_VIEW):  # Red: CT + saliency; Yellow: counterfactual
                logic = headless.sliceLogics[name]
                logic.FitSliceToAll()  # as a view shows a newly selected volume
                logic.GetSliceNode().JumpSliceByOffsetting(*focus)  # the linked views follow the same slice
                images.append(_slice_image(logic))
            key = counterfactual.GetAttribute("ACAT.Key") or ""
            print(f"model {Path(model).name}: prediction {result.prediction} "
                  f"{result.probabilities}; counterfactual towards {key}; axial slice at S {focus[2]:.1f} mm")
            labels = (f"CT + saliency (top 5%)  prediction: {result.prediction}",
                      f"counterfactual ({key})")
            picture = _compose(images[0], images[1], CAPTION, labels)
        finally:
            headless.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
