"""``acat explain --batch STUDIES --out DIR``: many studies in one run (`ACATLogic.batch` does the work).

One progress bar for the whole run (on a terminal; ``--progress-format jsonl`` gives progress events and one
``study`` event per study), one line on stderr for each study that fails, and at the end one line of counts
and the summary's path (``--json``: the summary records instead). Exit code 0 when every study is done or
skipped, 2 when a study failed for bad input, 1 when a study hit an internal error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ACATLogic.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, ACATInputError

from .terminal import jsonl_line, progress_reporter

log = logging.getLogger("acat")


def is_batch(args: argparse.Namespace) -> bool:
    """``--batch``, or a single .csv input (a CSV is never a scan)."""
    return bool(getattr(args, "batch", False)) or (len(args.input) == 1 and str(args.input[0]).lower().endswith(".csv"))


def explain_batch(args: argparse.Namespace) -> int:
    from ACATLogic.batch import SUMMARY_CSV, DicomRequest, list_studies, run_batch
    from ACATLogic.bundle import load_bundle
    from ACATLogic.catalogue import resolve_model
    from ACATLogic.explain import Explainer
    from ACATLogic.options import ExplainOptions

    from ACATLogic.io.path_relations import is_within, same_path

    from .commands import check_dicom_output_args

    if len(args.input) != 1:
        raise ACATInputError("a batch takes one folder of studies or one .csv list")
    if args.series:
        raise ACATInputError("--series picks a series of one study; in a batch, give each study's series in the "
                             "list's 'series' column")
    if args.workers < 1:
        raise ACATInputError(f"--workers must be at least 1, not {args.workers}")
    source, out = Path(args.input[0]), Path(args.out)
    if source.is_dir() and (same_path(out, source) or is_within(out, source)):
        raise ACATInputError("the output folder is inside the folder of studies; ACAT never writes into an input "
                             "folder - choose another location", out)
    if out.exists() and not out.is_dir():
        raise ACATInputError("the output path exists and is not a folder", out)
    try:
        options = ExplainOptions.from_namespace(args)
    except ValueError as exc:
        raise ACATInputError(str(exc)) from None
    check_dicom_output_args(args)
    studies = list_studies(source)
    bundle = load_bundle(resolve_model(args.model))
    explainer = Explainer(bundle, device=options.device)
    dicom = DicomRequest(args.dicom_top_percent, args.deidentify) if args.dicom else None
    jsonl = args.progress_format == "jsonl"
    n = len(studies)
    log.debug("explaining %d studies with %s into %s", n, bundle.id, os.fspath(out))

    def on_record(record: dict) -> None:
        where = f"study {record['index']} of {n} ({record['study']})"
        if record["status"] == "failed":
            log.error("acat: %s failed: %s", where, record["error"])
        else:
            for warning in record.get("warnings", []):
                log.warning("warning: %s: %s", where, warning)
        if jsonl:
            jsonl_line("study", **{k: v for k, v in record.items() if k not in ("internal", "warnings")})

    with progress_reporter(args.progress_format, not args.quiet, "batch") as progress:
        records = run_batch(studies, out, explainer, options, dicom=dicom, workers=args.workers,
                            overwrite=args.overwrite, progress=progress, on_record=on_record)
    counts = {status: sum(r["status"] == status for r in records) for status in ("done", "skipped", "failed")}
    summary = out / SUMMARY_CSV
    if args.json:
        print(json.dumps({"out": os.fspath(out), "model": bundle.id, "counts": counts, "summary": os.fspath(summary),
                          "studies": [{k: v for k, v in r.items() if k not in ("internal", "warnings")}
                                      for r in records]}, indent=2))
    elif jsonl:
        jsonl_line("result", out=os.fspath(out), model=bundle.id, counts=counts, summary=os.fspath(summary))
    else:
        print(f"Batch:        {counts['done']} done, {counts['skipped']} skipped (already done), "
              f"{counts['failed']} failed of {n} studies with {bundle.id}")
        print(f"Summary:      {summary} (and {summary.with_suffix('.jsonl').name})")
    if any(r.get("internal") for r in records):
        return EXIT_INTERNAL
    return EXIT_BAD_INPUT if counts["failed"] else EXIT_OK
