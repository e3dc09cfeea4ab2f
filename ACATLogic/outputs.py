"""Writing an `Explanation` to a folder: NRRD volumes, ``report.json`` and ``overview.png``.

The folder is assembled under a temporary name beside the target and renamed into place, so a crash or
a Cancel never leaves half the results, and two runs writing to one folder never mix their files. The
report holds no patient data: geometry, modality, the prediction, the model's id and weight hashes, the
method and its parameters, and timings.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .bundle import ModelBundle
from .errors import ACATInputError
from .explain import Explanation
from .io.atomic import atomic_directory, out_of_space
from .io.itk_files import write_itk_file
from .overview import write_overview
from .volume import CTVolume


def safe_name(label: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", label.lower()).strip("_") or "class"


def _geometry(volume: CTVolume) -> dict:
    return {"size_ijk": list(volume.size_ijk), "spacing_mm": volume.spacing_mm.tolist(),
            "origin_lps_mm": volume.origin_mm.tolist(), "direction_lps": volume.direction.tolist(),
            "orientation": volume.orientation_code()}


def build_report(explanation: Explanation, bundle: ModelBundle, volume: CTVolume, files: list[str],
                 extra_timings: Optional[dict] = None) -> dict:
    return {
        "prediction": explanation.label,
        "probabilities": explanation.probabilities,
        "classifier": explanation.classifier,
        "model": {"id": bundle.id, "version": bundle.card["version"], "task": bundle.card["task"],
                  "sha256": bundle.sha256(), "intended_use": bundle.card["intended_use"]},
        "method": explanation.method,
        "parameters": explanation.parameters,
        "reached_step": explanation.reached_step,
        "latent_l1": explanation.latent_l1,
        "trajectory": explanation.trajectory,
        "slice_weights": explanation.slice_weights,
        "device": explanation.device,
        "timings_s": {**explanation.timings, **(extra_timings or {})},
        "input": {**_geometry(volume), "modality": volume.metadata.get("modality"),
                  "warnings": list(volume.warnings)},
        "preprocessing": explanation.preprocessing,
        "warnings": explanation.warnings,
        "files": files,
    }


#: NRRD files written at once: gzip and ITK's writer release the GIL, so two threads write about 1.8x
#: faster on two cores (docs/BENCHMARKS.md); each volume in flight holds one full-size copy
WRITE_THREADS = 2


def _write_volumes(explanation: Explanation, volume: CTVolume, folder: Path, names: list) -> dict:
    """Write the saliency, counterfactual and attention volumes (made on reading, see `LazyVolumes`) into
    ``folder``; append their file names to ``names`` in a fixed order and return label -> total |HU change|
    of each counterfactual (measured while the volume is at hand)."""
    jobs = [("saliency.nrrd", lambda: explanation.saliency, None)]
    jobs += [(f"counterfactual_{safe_name(label)}.nrrd", lambda label=label: explanation.counterfactuals[label], label)
             for label in explanation.counterfactuals]
    jobs += [(f"attention_{safe_name(name)}.nrrd", lambda name=name: explanation.attention[name], None)
             for name in explanation.attention]

    def write(job) -> Optional[float]:
        name, make, label = job
        image = make()
        write_itk_file(image, folder / name)
        if label is None:
            return None
        # slab by slab: a whole-volume difference would hold two more full-size arrays per thread
        cf, hu = image.voxels_hu, volume.voxels_hu
        return float(sum(np.abs(cf[k:k + 16] - hu[k:k + 16]).sum(dtype=np.float64) for k in range(0, len(cf), 16)))

    pool = ThreadPoolExecutor(max_workers=max(1, min(WRITE_THREADS, os.cpu_count() or 1)))
    try:
        changes = list(pool.map(write, jobs))
    finally:  # on an error or a cancel, nothing new starts; the caller removes the partial folder
        pool.shutdown(wait=True, cancel_futures=True)
    names += [name for name, _, _ in jobs]
    return {label: c for (_, _, label), c in zip(jobs, changes) if label is not None}


def _write_failed(exc: BaseException, out_dir: Path, tmp: Path) -> ACATInputError:
    """One line naming the output (never the temporary folder, which is removed next) and the cause; a
    full disk is said so, whichever library hit it (ITK's NRRD writer does not pass errno on)."""
    if out_of_space(exc, tmp):
        return ACATInputError("no space left on device while writing the results; nothing was written - free some "
                              "space or choose another output", out_dir)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split(": ", 1)[-1]
    return ACATInputError(f"cannot write the results ({reason})", out_dir)


#: writes more results into the folder being assembled; returns (their relative names, report.json sections)
ExtraWriter = Callable[[Path], "tuple[list[str], dict]"]


def write_explanation(explanation: Explanation, out_dir, *, bundle: ModelBundle, volume: CTVolume,
                      overwrite: bool = False, extra_timings: Optional[dict] = None,
                      protect: Sequence[Path] = (), extra_writer: Optional[ExtraWriter] = None) -> list[Path]:
    """Write every result into ``out_dir`` (a new or empty folder, or any with ``overwrite``).

    ``protect``: the command's inputs (`ACATLogic.io.output_guard.input_paths`); a folder that is or holds
    one is never replaced. ``extra_writer(folder)`` adds results of its own (the DICOM results:
    `ACATLogic.dicom_export`) inside the same atomic folder; the sections it returns go into report.json.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ACATInputError("the output path is an existing file, not a folder; the results are a folder of "
                                 "files - choose a folder name", out_dir)
        if any(out_dir.iterdir()) and not overwrite:
            raise ACATInputError("the output folder is not empty; choose another or add --overwrite", out_dir)
    names: list[str] = []
    try:
        # an empty folder is replaced whole (and stays, empty, if this is cancelled)
        with atomic_directory(out_dir, overwrite=True, protect=protect) as tmp:
            try:
                _write_all(explanation, bundle, volume, tmp, names, extra_timings, extra_writer)
            except (OSError, ACATInputError) as exc:
                raise _write_failed(exc, out_dir, tmp) from None
            if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
                # another run filled the folder while this one was writing: its files stay, unmixed
                raise ACATInputError("another run wrote into the output folder meanwhile; its files are kept and "
                                     "these results were not written", out_dir)
    except OSError as exc:
        raise ACATInputError(f"cannot write the results ({exc.strerror or exc})", out_dir) from None
    return [out_dir / n for n in names]


def _write_all(explanation: Explanation, bundle: ModelBundle, volume: CTVolume, tmp: Path, names: list,
               extra_timings: Optional[dict], extra_writer: Optional[ExtraWriter] = None) -> None:
    """Every result file into the temporary folder ``tmp``; their names appended to ``names``."""
    change = _write_volumes(explanation, volume, tmp, names)
    healthy = explanation.class_names[bundle.healthy_index]
    shown = explanation.counterfactuals.get(healthy) if explanation.label != healthy else None
    if shown is None and change:
        # the class farthest from the prediction: the largest change
        shown = explanation.counterfactuals[max(change, key=change.get)]
    probs = ", ".join(f"{k} {v:.2f}" for k, v in explanation.probabilities.items())
    title = (f"{bundle.id}: {explanation.label} ({probs}) - {explanation.method} saliency")
    write_overview(tmp / "overview.png", volume, explanation.saliency, shown, title,
                   tuple(bundle.spec.hu_window))
    names.append("overview.png")
    sections = {}
    if extra_writer is not None:
        more, sections = extra_writer(tmp)
        names += more
    report = build_report(explanation, bundle, volume, names + ["report.json"], extra_timings)
    report.update(sections)
    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    names.append("report.json")
