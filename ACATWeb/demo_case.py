"""The bundled demo case, made on request: the real Cranium head CT with a simulated left MCA infarct.

It is generated (``ACATData.phantom.demo``, ~15 s) into the viewer's private folder the first time the
user picks it, then reused; nothing is downloaded. The image is a CT DICOM series labelled SIMULATED.
"""

from __future__ import annotations

from pathlib import Path


def demo_case_image(folder: Path, side: str = "left") -> Path:
    """The demo case's image (a DICOM series folder) under ``folder``, written if it is not there yet."""
    from ACATData.phantom.demo import write_demo_case

    folder = Path(folder) / f"demo-{side}"
    images = sorted(folder.glob("cases/*/image"))
    if images:
        return images[0]
    return Path(write_demo_case(folder, side=side)["image_path"])
