"""The ``acat`` sub-commands. Each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from ACATLogic.errors import EXIT_INTERNAL, ACATInputError, short_reason
from ACATLogic.io import read_volume, write_volume
from ACATLogic.io.itk_files import check_volume_name
from ACATLogic.io.output_guard import OutputClaim, claim_output, warn_if_short_of_space
from ACATLogic.io.read import check_sources
from ACATLogic.progress import no_progress
from ACATLogic.volume import CTVolume

from .terminal import jsonl_line, progress_reporter

log = logging.getLogger("acat")


def summary(volume: CTVolume) -> dict:
    """A PHI-free, JSON-ready description of a volume (what ``acat info`` prints)."""
    voxels = volume.voxels_hu
    return {
        "size_ijk": list(volume.size_ijk),
        "spacing_mm": [round(float(v), 6) for v in volume.spacing_mm],
        "origin_lps_mm": [round(float(v), 6) for v in volume.origin_mm],
        "direction_lps": [[round(float(v), 6) for v in row] for row in volume.direction],
        "orientation": volume.orientation_code(),
        "extent_mm": [round(float(v), 3) for v in volume.spacing_mm * (np.array(volume.size_ijk) - 1)],
        "hu_min": float(voxels.min()),
        "hu_max": float(voxels.max()),
        "metadata": dict(volume.metadata),
        "warnings": list(volume.warnings),
    }


def _source(args: argparse.Namespace):
    return args.input[0] if len(args.input) == 1 else list(args.input)


# ``--progress-format jsonl``: the share of the whole ``acat explain`` run that each stage reports into.
_STAGES = {"reading": (0.0, 0.05), "loading": (0.05, 0.1), "explaining": (0.1, 0.95), "writing": (0.95, 1.0)}


_BAR_STAGES = ("reading", "explaining")  # the default terminal output shows bars for these two only


def _progress(args: argparse.Namespace, stage: str):
    fmt = getattr(args, "progress_format", "bar")
    if fmt != "jsonl" and stage not in _BAR_STAGES:
        return contextlib.nullcontext(no_progress)
    return progress_reporter(fmt, not args.quiet, stage, *_STAGES[stage])


def _read(args: argparse.Namespace) -> CTVolume:
    with _progress(args, "reading") as progress:
        if getattr(args, "progress_format", "bar") == "jsonl":
            progress(0.0, "reading the scan")
        volume = read_volume(_source(args), series_uid=args.series, progress=progress)
    for warning in volume.warnings:
        log.warning("warning: %s", warning)
    return volume


def info(args: argparse.Namespace) -> int:
    volume = _read(args)
    s = summary(volume)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    meta = s["metadata"]
    i, j, k = s["size_ijk"]
    letters = {"L": "left", "R": "right", "P": "posterior", "A": "anterior", "S": "superior", "I": "inferior"}
    axes = ", ".join(f"{name} -> {letters[c]}" for name, c in zip(("i", "j", "k"), s["orientation"]))
    lines = [
        f"Input:        {args.input[0]}" + (f" (+{len(args.input) - 1} files)" if len(args.input) > 1 else ""),
        f"Format:       {meta.get('source_format', '?')}" + (f", {meta['series_selection']}" if "series_selection" in meta else ""),
        f"Modality:     {meta.get('modality', 'unknown (not stored in this format)')}",
    ]
    if "series_description" in meta:
        lines.append(f"Series:       {meta['series_description']}")
    if "series_instance_uid" in meta:
        lines.append(f"Series UID:   {meta['series_instance_uid']}")
    lines += [
        f"Size:         {i} x {j} x {k} voxels (columns x rows x slices)",
        "Spacing:      " + " x ".join(f"{v:.4g}" for v in s["spacing_mm"]) + " mm",
        f"Orientation:  {s['orientation']} ({axes})",
        "Origin:       (" + ", ".join(f"{v:.3f}" for v in s["origin_lps_mm"]) + ") mm, LPS",
        "Direction:    " + "  ".join("[" + " ".join(f"{v:+.4f}" for v in row) + "]" for row in s["direction_lps"]),
        f"HU range:     {s['hu_min']:g} .. {s['hu_max']:g}",
    ]
    for key, label in (("slice_thickness_mm", "Thickness"), ("kvp", "kVp"), ("manufacturer", "Manufacturer")):
        if key in meta:
            value = meta[key]
            lines.append(f"{label + ':':<14}{value:g}" if isinstance(value, float) else f"{label + ':':<14}{value}")
    lines.append("Warnings:     " + ("; ".join(s["warnings"]) if s["warnings"] else "none"))
    print("\n".join(lines))
    return 0


def convert(args: argparse.Namespace) -> int:
    check_volume_name(Path(args.output))  # before anything is read: never an input, one writer (output_guard)
    with claim_output(args.output, args.input, kind="file", overwrite=args.overwrite):
        return _convert(args)


def _convert(args: argparse.Namespace) -> int:
    output = Path(args.output)
    volume = _read(args)
    write_volume(volume, output, overwrite=args.overwrite)
    if getattr(args, "json", False):
        described = summary(volume)
        print(json.dumps({"output": os.fspath(output), **{k: v for k, v in described.items() if k != "metadata"},
                          "source_format": volume.metadata.get("source_format")}, indent=2))
    elif not args.quiet:
        log.info("wrote %s (%d x %d x %d voxels)", os.fspath(output), *volume.size_ijk)
    return 0


def view(args: argparse.Namespace) -> int:
    """``acat view``: the web viewer is the ACATWeb front end (slicer, vtk, trame: the ``slicer`` extra), loaded
    by name here only when the command runs, so that the other commands work without those packages."""
    import importlib

    try:
        server = importlib.import_module("ACATWeb.server")
    except ImportError as exc:
        raise ACATInputError(f"the web viewer is not installed ({exc}); from a checkout of the repository: "
                             "pip install -e '.[slicer]'") from None
    return server.run(args)


_GPU_OUT_OF_MEMORY = re.compile(r"\b(CUDA|MPS|HIP|XPU|GPU)\b[^\n]{0,80}?\bout of memory"
                                r"|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED", re.IGNORECASE)


def out_of_gpu_memory(exc: BaseException) -> bool:
    """True for a GPU allocator's failure: ``torch.OutOfMemoryError`` (CUDA), or the RuntimeError of the
    MPS / ROCm backends and cuBLAS / cuDNN that says so. Main memory running out is not one."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or bool(_GPU_OUT_OF_MEMORY.search(str(exc)))


def release_gpu_memory() -> None:
    """Return the failed attempt's cached blocks to the GPU (the models are moved to the CPU next)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def _dicom_source(args: argparse.Namespace):
    """What the DICOM results refer to: ``--dicom-source`` (a folder, a file, or the files a .txt lists),
    else the input itself."""
    given = getattr(args, "dicom_source", None)
    if not given:
        return _source(args)
    from ACATLogic.dicom_export import source_list

    return source_list(given)


def check_dicom_output_args(args: argparse.Namespace, source=None) -> None:
    """``--dicom`` needs a DICOM input, or an NRRD/NIfTI copy of one and ``--dicom-source``; ``--deidentify``
    and ``--dicom-source`` need ``--dicom``. One line (exit 2) before the model is even loaded."""
    given = getattr(args, "dicom_source", None)
    if not getattr(args, "dicom", False):
        if getattr(args, "deidentify", False):
            raise ACATInputError("--deidentify applies to the DICOM results: add --dicom")
        if given:
            raise ACATInputError("--dicom-source names the series the DICOM results refer to: add --dicom")
        return
    from ACATLogic.dicom_export import check_dicom_input, top_region
    from ACATLogic.io.itk_files import file_kind

    top_region(np.zeros(1), args.dicom_top_percent)  # checks the percentage
    if given:
        if getattr(args, "batch", False) or source is not None:
            raise ACATInputError("--dicom-source is for one scan: a batch's studies are their own DICOM sources")
        if len(args.input) != 1 or file_kind(Path(args.input[0])) is None:
            raise ACATInputError("--dicom-source is for an NRRD or NIfTI input: a DICOM input is its own source; "
                                 "leave out --dicom-source")
    if source is None and not getattr(args, "batch", False):
        source = _dicom_source(args)
    if source is not None:
        check_dicom_input(source)


def dicom_writer(args: argparse.Namespace, source, volume: CTVolume, explanation, bundle, found=None):
    """The DICOM results' writer for `write_explanation` when ``--dicom`` is given, else None. ``found``: the
    source's headers read earlier (`dicom_found`)."""
    if not getattr(args, "dicom", False):
        return None
    from ACATLogic.dicom_export import results_writer

    if getattr(args, "dicom_source", None):
        source = _dicom_source(args)
    return results_writer(source, volume, explanation, bundle, series_uid=args.series,
                          top_percent=args.dicom_top_percent, deidentify_output=args.deidentify, found=found)


def dicom_found(args: argparse.Namespace, volume: CTVolume):
    """With ``--dicom``: the DICOM source's headers, matched to ``volume`` before the long explanation (a
    ``--dicom-source`` the volume does not lie on fails now, in one line); else None."""
    if not getattr(args, "dicom", False):
        return None
    from ACATLogic.dicom_export import dicom_source

    return dicom_source(_dicom_source(args), volume, series_uid=args.series)


def explain(args: argparse.Namespace) -> int:
    check_sources(_source(args))  # before anything is loaded: inputs exist, the output is none of them, one writer
    with claim_output(args.out, args.input, kind="folder", overwrite=args.overwrite) as claim:
        return _explain(args, claim)


def _explain(args: argparse.Namespace, claim: OutputClaim) -> int:
    import time

    from ACATLogic.bundle import load_bundle
    from ACATLogic.catalogue import resolve_model
    from ACATLogic.explain import Explainer
    from ACATLogic.options import ExplainOptions
    from ACATLogic.outputs import write_explanation

    out = claim.out
    jsonl = args.progress_format == "jsonl"
    try:
        options = ExplainOptions.from_namespace(args)
    except ValueError as exc:
        raise ACATInputError(str(exc)) from None
    check_dicom_output_args(args)
    bundle = load_bundle(resolve_model(args.model))
    t0 = time.perf_counter()
    volume = _read(args)
    found = dicom_found(args, volume)
    read_s = time.perf_counter() - t0
    warn_if_short_of_space(out, volume.voxels_hu.nbytes * (2 + len(bundle.labels) + 4))

    def explain_on(device: str):
        with _progress(args, "loading") as progress:
            progress(0.0, f"loading the model {bundle.id}")
            explainer = Explainer(bundle, device=device)
            progress(1.0, f"model on {explainer.device.type}")
        with _progress(args, "explaining") as progress:
            return explainer.explain(volume, options, progress=progress)

    fallback = None
    try:
        explanation = explain_on(options.device)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        # --device auto promises the best device that works: out of GPU memory, the CPU takes over.
        # A device named explicitly fails instead (the Slicer module then asks before using the CPU).
        if options.device != "auto" or not out_of_gpu_memory(exc):
            raise
        reason = short_reason(exc, 120)
        log.warning("warning: the GPU ran out of memory (%s); explaining on the CPU instead, which is slower", reason)
        fallback = f"the GPU ran out of memory ({reason}); explained on the CPU instead"
        release_gpu_memory()
        explanation = explain_on("cpu")
    for warning in explanation.warnings:
        log.warning("warning: %s", warning)
    if fallback:
        explanation.warnings.append(fallback)  # recorded in report.json: where the numbers came from
    t1 = time.perf_counter()
    with _progress(args, "writing") as progress:
        progress(0.0, "writing the results")
        files = write_explanation(explanation, out, bundle=bundle, volume=volume, overwrite=args.overwrite,
                                  extra_timings={"read_s": round(read_s, 4)}, protect=claim.inputs,
                                  extra_writer=dicom_writer(args, _source(args), volume, explanation, bundle, found))
        progress(1.0, "done")
    write_s = time.perf_counter() - t1
    if jsonl:
        jsonl_line("result", out=os.fspath(out), prediction=explanation.label,
                   probabilities=explanation.probabilities, classifier=explanation.classifier, model=bundle.id,
                   method=explanation.method, files=[f.name for f in files], write_s=round(write_s, 3))
        return 0
    if getattr(args, "json", False):
        print(json.dumps({"out": os.fspath(out), "prediction": explanation.label,
                          "probabilities": explanation.probabilities, "classifier": explanation.classifier,
                          "model": bundle.id, "method": explanation.method,
                          "files": [os.fspath(f.relative_to(out)) for f in files], "write_s": round(write_s, 3)},
                         indent=2))
        return 0
    probs = ", ".join(f"{k} {v:.3f}" for k, v in explanation.probabilities.items())
    print(f"Prediction:   {explanation.label} ({probs}) by the {explanation.classifier} classifier of {bundle.id}")
    print(f"Method:       {explanation.method}")
    print(f"Wrote:        {len(files)} files to {out} in {write_s:.1f} s")
    return 0
