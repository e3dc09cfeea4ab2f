"""Explaining many studies in one run: a folder of studies or a CSV list, one results folder per study, a summary.

::

    studies = list_studies("scans/")                 # each sub-folder (a DICOM study) or NRRD/NIfTI file is a study
    studies = list_studies("studies.csv")            # columns: path (or image) [, id] [, series]; other columns kept out
    records = run_batch(studies, "results/", bundle, ExplainOptions(), workers=2)

``results/`` then holds one folder per study - exactly what ``acat explain`` writes for one scan - and
``summary.csv`` / ``summary.jsonl``: per study its status (done, skipped, failed), the prediction, the class
probabilities, the timings, and for a failure the reason in one line. ``batch.json`` records the model and the
options, so that a second run into the same folder uses the same ones.

* **Re-runs skip finished studies**: a study whose folder holds its report.json is done (folders are written
  whole or not at all, so a finished folder is complete); its summary row is read back from the report.
* **A bad study does not stop the run**: its reason is recorded and reported, and the next study starts.
* **No patient data in names**: a study's folder is named by the CSV's ``id`` column when there is one (the
  user's choice), else ``study-`` and 12 hex digits of the sha256 of its path relative to the folder or CSV -
  never by the input's own name, which often holds a patient's name. The summary and the reasons given for
  failures name studies the same way; the input paths appear nowhere.
* ``workers`` > 1 runs that many processes, each with its own copy of the models and an equal share of the CPU
  threads: for small models on many cores, or to keep a GPU fed while the next scans are read.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .errors import ACATInputError, Cancelled, short_reason
from .io.atomic import atomic_path
from .io.itk_files import file_kind
from .options import ExplainOptions
from .progress import ProgressCallback, is_cancelled, no_progress, scaled

SUMMARY_CSV = "summary.csv"
SUMMARY_JSONL = "summary.jsonl"
BATCH_CARD = "batch.json"
REPORT = "report.json"
DICOM_SUFFIXES = (".dcm", ".dicom")
_KEY = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Study:
    """One study of a batch. ``source`` is what `read_volume` reads; it is never written anywhere (its path
    may hold a patient's name): ``key`` names the study in folders, logs and the summary."""

    index: int  # 1-based, in listing order
    key: str
    source: str
    series: Optional[str] = None
    id: str = ""


@dataclass(frozen=True)
class DicomRequest:
    """The DICOM results to write for each study (``acat explain --dicom``; `ACATLogic.dicom_export`)."""

    top_percent: float = 5.0
    deidentify: bool = False


def _anonymous_key(relative: str) -> str:
    return "study-" + hashlib.sha256(relative.encode("utf-8")).hexdigest()[:12]


def _id_key(value: str, where: str) -> str:
    key = _KEY.sub("_", value.strip()).strip("._") or ""
    if not key:
        raise ACATInputError(f"{where}: the id {value!r} has no letter or digit to name a folder with")
    return key[:100]


def list_studies(source: Union[str, os.PathLike]) -> list[Study]:
    """The studies of a folder (each sub-folder, NRRD/NIfTI file or .dcm file, sorted by name; hidden ones
    left out) or of a CSV file (columns ``path`` or ``image``, optional ``id`` or ``case_id``, ``series``;
    paths relative to the CSV's folder). Raises `ACATInputError` naming the problem."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _studies_from_csv(path)
    if not path.is_dir():
        raise ACATInputError("a batch needs a folder of studies or a .csv list of them", path)
    entries = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or (entry.is_file() and (file_kind(entry) is not None
                                                    or entry.suffix.lower() in DICOM_SUFFIXES)):
            entries.append(entry)
    if not entries:
        raise ACATInputError("no studies here: a batch folder holds one sub-folder (or NRRD / NIfTI file) per "
                             "study", path)
    return [Study(n, _anonymous_key(e.name), str(e)) for n, e in enumerate(entries, start=1)]


def _studies_from_csv(path: Path) -> list[Study]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ACATInputError(f"cannot read the list ({short_reason(exc)})", path) from None
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or [])
    column = "path" if "path" in columns else ("image" if "image" in columns else None)
    if column is None:
        raise ACATInputError(f"the list needs a 'path' (or 'image') column; it has {sorted(columns)}", path)
    id_column = "id" if "id" in columns else ("case_id" if "case_id" in columns else None)
    studies, keys = [], {}
    for line, row in enumerate(reader, start=2):
        value = (row.get(column) or "").strip()
        if not value:
            raise ACATInputError(f"line {line}: the {column} is empty", path)
        given = (row.get(id_column) or "").strip() if id_column else ""
        key = _id_key(given, f"{path.name} line {line}") if given else _anonymous_key(value)
        if key in keys:
            raise ACATInputError(f"line {line}: study {key!r} is listed twice (first on line {keys[key]})", path)
        keys[key] = line
        full = Path(value) if Path(value).is_absolute() else path.parent / value
        studies.append(Study(len(studies) + 1, key, str(full), (row.get("series") or "").strip() or None, given))
    if not studies:
        raise ACATInputError("the list names no study", path)
    return studies


def scrub(text: str, study: Study) -> str:
    """``text`` with the study's input path replaced by its key: messages may name files, and paths may hold
    a patient's name."""
    for form in sorted({study.source, os.path.abspath(study.source), os.path.realpath(study.source)},
                       key=len, reverse=True):
        text = text.replace(form, f"[{study.key}]")
    return text.removeprefix(f"[{study.key}]: ")  # the study is named beside the message anyway


# ------------------------------------------------------------------------------------------------------------
def settings(bundle, options: ExplainOptions, dicom: Optional[DicomRequest]) -> dict:
    """What batch.json records: the model and every option, so a re-run cannot mix two kinds of results."""
    return {"model": {"id": bundle.id, "version": bundle.card.get("version", ""), "sha256": bundle.sha256()},
            "options": {k: v for k, v in options.to_dict().items() if k != "device"},
            "dicom": dataclasses.asdict(dicom) if dicom is not None else None}


def _record(study: Study, status: str, **fields) -> dict:
    return {"index": study.index, "study": study.key, "id": study.id, "status": status, "prediction": None,
            "probabilities": {}, "classifier": None, "method": None, "timings_s": {}, "error": None, **fields}


def _from_report(study: Study, folder: Path, status: str) -> dict:
    report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
    timings = report.get("timings_s", {})
    return _record(study, status, prediction=report.get("prediction"),
                   probabilities=report.get("probabilities", {}), classifier=report.get("classifier"),
                   method=report.get("method"), timings_s=timings)


def explain_study(explainer, study: Study, out_dir: Path, options: ExplainOptions, *,
                  dicom: Optional[DicomRequest] = None, progress: ProgressCallback = no_progress,
                  cancel=None, overwrite: bool = False) -> dict:
    """Read, explain and write one study into ``out_dir / study.key``; returns its summary record. Bad input
    and internal errors become a "failed" record with a one-line reason (input paths replaced by the key);
    a cancel raises `ACATLogic.errors.Cancelled`. ``overwrite``: replace the study's results (atomically:
    the old ones stay until the new ones are complete)."""
    from .io import read_volume
    from .outputs import write_explanation

    folder = Path(out_dir) / study.key
    start = time.perf_counter()
    try:
        if dicom is not None:
            from .dicom_export import check_dicom_input

            check_dicom_input(study.source)
        volume = read_volume(study.source, series_uid=study.series, progress=scaled(progress, 0.0, 0.1))
        read_s = time.perf_counter() - start
        explanation = explainer.explain(volume, options, progress=scaled(progress, 0.1, 0.95), cancel=cancel)
        explain_s = time.perf_counter() - start - read_s
        writer = None
        if dicom is not None:
            from .dicom_export import results_writer

            writer = results_writer(study.source, volume, explanation, explainer.bundle, series_uid=study.series,
                                    top_percent=dicom.top_percent, deidentify_output=dicom.deidentify)
        write_explanation(explanation, folder, bundle=explainer.bundle, volume=volume, overwrite=overwrite,
                          extra_timings={"read_s": round(read_s, 4)}, extra_writer=writer)
        progress(1.0, "written")
    except (Cancelled, KeyboardInterrupt):
        raise
    except ACATInputError as exc:
        return _record(study, "failed", error=scrub(str(exc), study),
                       timings_s={"total_s": round(time.perf_counter() - start, 3)})
    except Exception as exc:  # noqa: BLE001 - one study's bug must not end the run: reported, and exit 1
        return _record(study, "failed", error=scrub(f"internal error: {type(exc).__name__}: {short_reason(exc)}",
                                                    study),
                       internal=True, timings_s={"total_s": round(time.perf_counter() - start, 3)})
    record = _from_report(study, folder, "done")
    record["timings_s"] = {"read_s": round(read_s, 3), "explain_s": round(explain_s, 3),
                           "write_s": round(time.perf_counter() - start - read_s - explain_s, 3),
                           "total_s": round(time.perf_counter() - start, 3)}
    record["warnings"] = [scrub(w, study) for w in (*volume.warnings, *explanation.warnings)]
    return record


# ------------------------------------------------------------------------------------------------------------
def _summary_row(record: dict, labels: Sequence[str]) -> dict:
    t = record.get("timings_s") or {}
    row = {k: record.get(k) for k in ("index", "study", "id", "status", "prediction", "classifier", "method")}
    row.update({f"p_{label}": record["probabilities"].get(label) for label in labels})
    row.update({k: t.get(k) for k in ("read_s", "explain_s", "write_s", "total_s")})
    row["error"] = record.get("error")
    return row


def write_summary(out_dir: Path, records: list[dict], labels: Sequence[str]) -> tuple[Path, Path]:
    """summary.csv and summary.jsonl (one study per row / line, in listing order), each written atomically."""
    records = sorted(records, key=lambda r: r["index"])
    rows = [_summary_row(r, labels) for r in records]
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["index", "study", "id", "status"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    out_dir = Path(out_dir)
    with atomic_path(out_dir / SUMMARY_CSV, overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    lines = "".join(json.dumps({k: v for k, v in r.items() if k != "internal"}) + "\n" for r in records)
    with atomic_path(out_dir / SUMMARY_JSONL, overwrite=True) as tmp:
        tmp.write_text(lines, encoding="utf-8")
    return out_dir / SUMMARY_CSV, out_dir / SUMMARY_JSONL


def _check_settings(out_dir: Path, wanted: dict, overwrite: bool) -> None:
    card = out_dir / BATCH_CARD
    if card.is_file() and not overwrite:
        try:
            before = json.loads(card.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        if before != wanted:
            raise ACATInputError("holds a batch run with another model or other options; choose another --out, "
                                 "or add --overwrite to explain every study again", out_dir)
    with atomic_path(card, overwrite=True) as tmp:
        tmp.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")


# a process's Explainer for `workers` > 1 (built once per process by `_init_worker`)
_WORKER: dict = {}


def _stop(signum, frame) -> None:  # noqa: ARG001 - the signal handler's signature
    raise KeyboardInterrupt()


def _init_worker(bundle_path: str, device: str, threads: int) -> None:
    import signal

    from .bundle import load_bundle
    from .explain import Explainer

    # SIGTERM (the run stopped) unwinds like Ctrl+C, so a study being written leaves no temporary folder behind
    signal.signal(signal.SIGTERM, _stop)
    _WORKER["explainer"] = Explainer(load_bundle(bundle_path), device=device, threads=threads)


def _work(study: Study, out_dir: str, options: dict, dicom: Optional[dict], overwrite: bool) -> dict:
    options = ExplainOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    return explain_study(_WORKER["explainer"], study, Path(out_dir), options,
                         dicom=DicomRequest(**dicom) if dicom else None, overwrite=overwrite)


def run_batch(studies: Sequence[Study], out_dir, explainer, options: Optional[ExplainOptions] = None, *,
              dicom: Optional[DicomRequest] = None, workers: int = 1, overwrite: bool = False,
              progress: ProgressCallback = no_progress, on_record: Callable[[dict], None] = lambda record: None,
              cancel=None) -> list[dict]:
    """Explain every study into ``out_dir`` (module docstring); returns the records in listing order.

    ``explainer``: an `ACATLogic.explain.Explainer` (its bundle and device serve every worker). ``on_record``
    is called as each study ends (done, skipped or failed); ``progress`` covers the whole run."""
    options = options or ExplainOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = explainer.bundle
    _check_settings(out_dir, settings(bundle, options, dicom), overwrite)
    labels = bundle.labels
    records: list[dict] = []
    todo: list[Study] = []
    n = len(studies)

    def finish(record: dict) -> None:
        records.append(record)
        write_summary(out_dir, records, labels)  # after every study: a stopped run keeps what it did
        on_record(record)

    for study in studies:
        folder = out_dir / study.key
        if not overwrite and (folder / REPORT).is_file():
            finish(_from_report(study, folder, "skipped"))
        else:
            todo.append(study)
    progress(len(records) / max(n, 1), f"{len(records)} of {n} studies already done")
    if workers <= 1 or len(todo) <= 1:
        for study in todo:
            if is_cancelled(cancel):
                raise Cancelled("cancelled")
            done = len(records)
            finish(explain_study(explainer, study, out_dir, options, dicom=dicom, cancel=cancel, overwrite=overwrite,
                                 progress=scaled(progress, done / n, (done + 1) / n)))
            progress(len(records) / n, f"{len(records)} of {n} studies")
        return sorted(records, key=lambda r: r["index"])
    return _run_in_processes(todo, out_dir, explainer, options, dicom, workers, records, finish, progress, cancel, n,
                             overwrite)


def _run_in_processes(todo, out_dir, explainer, options, dicom, workers, records, finish, progress, cancel, n,
                      overwrite):
    import multiprocessing

    workers = min(workers, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    device = explainer.device.type
    # spawn, not fork: the parent already runs torch's OpenMP threads, which do not survive a fork
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(str(explainer.bundle.path), device, threads))
    args = (str(out_dir), options.to_dict(), dataclasses.asdict(dicom) if dicom else None, overwrite)
    pending = {pool.submit(_work, study, *args): study for study in todo}
    try:
        while pending:
            if is_cancelled(cancel):
                raise Cancelled("cancelled")
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                study = pending.pop(future)
                try:
                    record = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory)
                    record = _record(study, "failed", internal=True,
                                     error=scrub(f"internal error: the worker process failed ({short_reason(exc)})",
                                                 study))
                finish(record)
                progress(len(records) / n, f"{len(records)} of {n} studies")
    finally:
        for future in pending:
            future.cancel()
        for process in list(getattr(pool, "_processes", {}).values()):  # stop the studies in flight
            if process.is_alive():
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
    return sorted(records, key=lambda r: r["index"])
