"""Scans for training: three sources, one preprocessing cache, memory-mapped datasets.

Sources (``data.source``):

* ``csv``: a manifest in the one format that training and evaluation read (`training.manifest`): ``path``
  (or ``image``: a DICOM folder, NRRD or NIfTI, relative to the CSV's folder or absolute), ``label`` (an
  index or a class name: the config's ``data.labels``, or brain ``none/left/right/both`` as in IST-3's
  side-of-lesion labels, lung ``normal/covid19``), optional ``case_id``, ``split`` (train/val/test; all
  empty -> a stratified split by ``data.split_seed``), ``lesion_mask`` (or ``mask``), ``territory_map``.
* ``phantom``: the phantom benchmark's manifest.csv, the same format: its ``task`` column is checked, its
  split used as it is, its .npz images read by `ACATData.phantom.io.load_case`.
* ``mosmed``: MosMed as published: folders ``CT-0`` ... ``CT-4`` of ``study_XXXX.nii.gz``, read as they
  are. ``data.mosmed_classes`` maps folders to labels: CT-0 -> 0 (normal), CT-2/3/4 -> 1 (covid19);
  CT-1 is left out by default, like the paper's binary task. Split: 70/15/15 stratified by seed.

Bad data - a missing or unreadable file, a label out of range, fewer axial slices than the model reads,
a non-CT series (`ACATLogic.read_volume` raises `ACATInputError` with a one-line reason) - becomes a
`DataProblem` naming the path. ``data.on_error=fail`` (default) stops with every problem listed;
``skip`` logs each one and trains without those scans. Nothing is ever dropped silently.

The cache: every scan is read and preprocessed once (`ACATLogic.preprocess.prepare`, coverage
"sampled": S slices spread over the scan) into ``images.npy`` - (N, S, 1, H, W) float32 in [0, 1],
memory-mapped by the datasets - under ``<cache_dir>/<task>-<source>-<key>``, where the key hashes the
input spec and every file's path, size and modification time. The folder is built under a temporary
name and renamed when complete, so an interrupted build is never mistaken for a cache.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ACATLogic.errors import ACATInputError, short_reason
from ACATLogic.io.atomic import usual_mode
from ACATLogic.preprocess import InputSpec, prepare

from .checkpoint import atomic_write_json
from .config import TrainConfig
from .manifest import read_manifest

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1
_PHANTOM_TASKS = {"brain_stroke": "brain", "lung_covid": "lung", "brain": "brain", "lung": "lung"}


@dataclass
class CaseRecord:
    """One scan as the data source lists it (paths absolute)."""

    case_id: str
    image: str
    label: int
    split: str = ""
    lesion_mask: str = ""
    territory: str = ""
    where: str = ""  # "manifest.csv line 7": for messages


@dataclass
class DataProblem:
    """A scan that cannot be used, and why (one line, with the path)."""

    path: str
    message: str
    case_id: str = ""

    def line(self) -> str:
        return f"{self.path}: {self.message}"


def class_names(task: str) -> tuple[str, ...]:
    """The brain / lung task's classes (another task's are its config's ``data.labels``: `TrainConfig.class_names`)."""
    from .config import BUILTIN_LABELS

    return BUILTIN_LABELS.get(task, ())


# ---------------------------------------------------------------------------------------------------
# sources


def stratified_split(labels: Sequence[int], seed: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> list[str]:
    """'train'/'val'/'test' per case: each label's cases shuffled by ``seed`` and cut by ``fractions``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 70_15_15]))
    splits = [""] * len(labels)
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idx)
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        for rank, i in enumerate(idx):
            splits[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return splits


def _resolve(root: Path, value: str) -> str:
    if not value:
        return ""
    p = Path(value)
    return str(p if p.is_absolute() else (root / p))


def _finish_rows(rows: list[CaseRecord], problems: list[DataProblem], cfg: TrainConfig, origin: Path) -> None:
    """Check existence and split values; split the rows (stratified) when the source has no split."""
    for rec in rows:
        if not os.path.exists(rec.image):
            problems.append(DataProblem(rec.image, f"no such file or folder ({rec.where})", rec.case_id))
    rows[:] = [rec for rec in rows if os.path.exists(rec.image)]
    given = [r.split for r in rows]
    if any(given) and not all(given):
        missing = next(r for r in rows if not r.split)
        raise ACATInputError(f"some rows have a split and some do not (first without: {missing.where}); "
                             "fill the split column for every row or leave it empty everywhere", origin)
    for r in rows:
        if r.split and r.split not in SPLITS:
            raise ACATInputError(f"{r.where}: split {r.split!r} is not one of {list(SPLITS)}", origin)
    if not any(given):
        for r, s in zip(rows, stratified_split([r.label for r in rows], cfg.data.split_seed, cfg.data.split_fractions)):
            r.split = s


def _records(cfg: TrainConfig, check_task: bool) -> tuple[list[CaseRecord], list[DataProblem]]:
    """The manifest's rows as records (`training.manifest`: the one format); ``check_task``: a row whose ``task``
    column names another task is a problem (the phantom benchmark's manifests say their task)."""
    path = Path(cfg.data.path)
    rows, found = read_manifest(path, cfg.class_names)
    problems = [DataProblem(_resolve(path.parent, p["image"]) or str(path), p["message"], p["case_id"])
                for p in found]
    records = []
    for row in rows:
        image = _resolve(path.parent, row["image"])
        raw_task = row.get("task", "")
        task = _PHANTOM_TASKS.get(raw_task, raw_task)
        if check_task and raw_task and task != cfg.data.task:
            problems.append(DataProblem(image, f"a {raw_task} case in a {cfg.data.task} run ({row['where']})",
                                        row["case_id"]))
            continue
        records.append(CaseRecord(row["case_id"], image, row["label"], row["split"],
                                  _resolve(path.parent, row["lesion_mask"]), _resolve(path.parent, row["territory_map"]),
                                  row["where"]))
    _finish_rows(records, problems, cfg, path)
    return records, problems


def read_csv_manifest(cfg: TrainConfig) -> tuple[list[CaseRecord], list[DataProblem]]:
    """A CSV manifest in the one format (`training.manifest`)."""
    return _records(cfg, check_task=False)


def read_phantom_manifest(cfg: TrainConfig) -> tuple[list[CaseRecord], list[DataProblem]]:
    """The phantom benchmark's manifest (ACATData/phantom/io.py): the same format, its task column checked and
    its split column used as it is; its .npz images are read by `load_volume`."""
    return _records(cfg, check_task=True)


def read_mosmed(cfg: TrainConfig) -> tuple[list[CaseRecord], list[DataProblem]]:
    """MosMed's CT-0 ... CT-4 folders of study_XXXX.nii.gz (module docstring)."""
    root = Path(cfg.data.path)
    if not root.is_dir():
        raise ACATInputError("no such MosMed folder (it should hold CT-0, CT-1, ... CT-4)", root)
    classes = {str(k): int(v) for k, v in cfg.data.mosmed_classes.items()}
    for folder, label in classes.items():
        if not 0 <= label < len(cfg.class_names):
            raise ACATInputError(f"data.mosmed_classes maps {folder} to {label}, outside the {cfg.data.task} labels")
    present = [f for f in classes if (root / f).is_dir()]
    if not present:
        raise ACATInputError(f"none of the folders {sorted(classes)} is here; is this the MosMed root?", root)
    rows = []
    for folder in sorted(present):
        for f in sorted((root / folder).iterdir()):
            if f.name.endswith((".nii.gz", ".nii")) and not f.name.startswith("."):
                study = f.name.split(".")[0]
                rows.append(CaseRecord(f"{folder}/{study}", str(f), classes[folder], "", where=f"{folder}/{f.name}"))
    problems: list[DataProblem] = []
    _finish_rows(rows, problems, cfg, root)
    return rows, problems


SOURCES: dict[str, Callable[[TrainConfig], tuple[list[CaseRecord], list[DataProblem]]]] = {
    "csv": read_csv_manifest, "phantom": read_phantom_manifest, "mosmed": read_mosmed}


def list_cases(cfg: TrainConfig) -> tuple[list[CaseRecord], list[DataProblem]]:
    """The source's cases (paths checked, split assigned) and the problems found so far."""
    return SOURCES[cfg.data.source](cfg)


# ---------------------------------------------------------------------------------------------------
# reading and preprocessing one scan


def load_volume(source: str, manifest: str, record: CaseRecord):
    """The CT volume of ``record`` (`ACATLogic.CTVolume`)."""
    if source == "phantom":
        from ACATData.phantom.io import load_case

        root = Path(manifest).parent
        row = {"image": os.path.relpath(record.image, root), "lesion_mask": "", "organ_mask": "", "territory_map": ""}
        return load_case(manifest, row).volume
    from ACATLogic.io import read_volume

    return read_volume(record.image)


def prepare_one(job: tuple) -> tuple[int, Optional[np.ndarray], Optional[str]]:
    """(index, (S, 1, H, W) float32 or None, problem or None): one scan read and preprocessed.

    A top-level function so that a process pool can run it.
    """
    index, source, manifest, record_dict, spec_dict = job
    record = CaseRecord(**record_dict)
    spec = InputSpec.from_dict(spec_dict)
    try:
        volume = load_volume(source, manifest, record)
        prepared = prepare(volume, spec, coverage="sampled")
        n_slices = prepared.canonical.voxels_hu.shape[0]
        if n_slices < spec.slices:
            return index, None, f"only {n_slices} axial slices; the model reads {spec.slices}"
        return index, prepared.images[0].numpy().astype(np.float32), None
    except ACATInputError as exc:
        return index, None, str(exc).removeprefix(f"{record.image}: ")
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        return index, None, f"cannot be read ({short_reason(exc)})"


def _worker_init() -> None:
    torch.set_num_threads(1)  # the pool already has one process per core


# ---------------------------------------------------------------------------------------------------
# the cache


def _file_signature(path: str) -> list:
    """(relative name, size, mtime_ns) of a file, or of every file under a folder (a DICOM series)."""
    p = Path(path)
    if p.is_dir():
        out = []
        for dirpath, _, files in os.walk(p):
            for name in sorted(files):
                st = os.stat(os.path.join(dirpath, name))
                out.append([os.path.relpath(os.path.join(dirpath, name), p), st.st_size, st.st_mtime_ns])
        return sorted(out)
    st = os.stat(p)
    return [[p.name, st.st_size, st.st_mtime_ns]]


def cache_key(cfg: TrainConfig, records: Sequence[CaseRecord]) -> str:
    """sha256 of the input spec and every listed file's path, size and modification time.

    The spec's organ is keyed as its default for the alignment: the cached slices do not depend on it (only the
    maps made from them do), so setting input.organ keeps the cache and the stages trained on it."""
    h = hashlib.sha256()
    spec = dataclasses.replace(cfg.input.spec(), organ="")
    h.update(json.dumps({"format": CACHE_FORMAT, "source": cfg.data.source, "task": cfg.data.task,
                         "spec": spec.to_dict()}, sort_keys=True).encode())
    for r in records:
        h.update(json.dumps([r.case_id, os.path.abspath(r.image), _file_signature(r.image)]).encode())
    return h.hexdigest()


def cache_root(cfg: TrainConfig) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.out_dir) / "cache"


def build_cache(cfg: TrainConfig, records: Sequence[CaseRecord], folder: Path,
                log: Callable[[str], None] = print) -> None:
    """Preprocess every record into ``folder`` (images.npy + index.json), atomically.

    Read problems are recorded in index.json; with ``on_error=fail`` the first one stops the build.
    """
    spec = cfg.input.spec()
    n = len(records)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    usual_mode(tmp)
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.float32,
                                           shape=(max(n, 1), spec.slices, 1, *spec.size))
        jobs = [(i, cfg.data.source, cfg.data.path, asdict(r), spec.to_dict()) for i, r in enumerate(records)]
        problems, ok = {}, []
        if cfg.data.prepare_workers > 0 and n > 1:
            # spawn, not fork: the parent may already run OpenMP threads, which do not survive a fork
            pool = multiprocessing.get_context("spawn").Pool(cfg.data.prepare_workers, initializer=_worker_init)
            results = pool.imap(prepare_one, jobs, chunksize=1)
        else:
            pool, results = None, map(prepare_one, jobs)
        try:
            for done, (i, array, problem) in enumerate(results, start=1):
                if problem is not None:
                    if cfg.data.on_error == "fail":
                        raise ACATInputError(f"{problem} (data.on_error=skip trains without it)", records[i].image)
                    problems[i] = problem
                else:
                    images[i] = array
                    ok.append(i)
                if (done * 10) // n != ((done - 1) * 10) // n:  # every tenth
                    log(f"cache: prepared {done}/{n} scans")
        finally:
            if pool is not None:
                pool.terminate()
        images.flush()
        del images
        with open(tmp / "images.npy", "rb+") as fh:
            os.fsync(fh.fileno())
        index = {"format": CACHE_FORMAT, "spec": spec.to_dict(), "source": cfg.data.source,
                 "rows": {records[i].case_id: i for i in ok},
                 "problems": [asdict(DataProblem(records[i].image, p, records[i].case_id))
                              for i, p in problems.items()]}
        atomic_write_json(tmp / "index.json", index)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "index.json").is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ScanData:
    """The usable scans of a run: cache rows, labels and splits.

    Attributes:
        images_path: the cache's images.npy, (N, S, 1, H, W) float32 in [0, 1].
        records: usable cases, in cache-row order of ``rows``.
        rows: cache row of each record.
        problems: every scan left out, with its path and reason.
        key: the cache key (part of every stage's fingerprint).
        n_rows: rows of images.npy, skipped scans included (their rows stay zero).
    """

    images_path: Path
    records: list
    rows: list
    problems: list
    key: str
    spec: InputSpec
    task: str
    n_rows: int = 0

    def split(self, name: str) -> tuple[list[int], list[int]]:
        """(cache rows, labels) of one split, in manifest order."""
        picked = [(row, r.label) for row, r in zip(self.rows, self.records) if r.split == name]
        return [p[0] for p in picked], [p[1] for p in picked]

    def digest(self) -> str:
        """sha256 of the cache key and every usable case's (id, label, split): the data a stage saw."""
        items = [[r.case_id, r.label, r.split, row] for r, row in zip(self.records, self.rows)]
        return hashlib.sha256(json.dumps([self.key, items]).encode()).hexdigest()

    def counts(self) -> dict:
        return {s: len(self.split(s)[0]) for s in SPLITS} | {"skipped": len(self.problems)}

    def describe(self, cfg: TrainConfig) -> str:
        c = self.counts()
        return (f"{cfg.data.source} data {cfg.data.path}: {c['train']}/{c['val']}/{c['test']} scans "
                f"(train/val/test), {c['skipped']} skipped; split seed {cfg.data.split_seed}")


def open_data(cfg: TrainConfig, *, is_main: bool = True, wait: Callable[[], None] = lambda: None,
              log: Callable[[str], None] = print) -> ScanData:
    """List the source, build the cache once (rank 0; the others ``wait``), apply ``data.on_error``.

    Raises:
        ACATInputError: a problem with ``on_error=fail`` (all listed), or no usable training scan.
    """
    records, problems = list_cases(cfg)
    key = cache_key(cfg, records)
    folder = cache_root(cfg) / f"{cfg.data.task}-{cfg.data.source}-{key[:16]}"
    if cfg.data.on_error == "fail" and problems:
        lines = "; ".join(p.line() for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ACATInputError(f"{len(problems)} problem(s) in the data: {lines}{more}. Fix them, or set "
                             "data.on_error=skip to train without those scans")
    if is_main and not (folder / "index.json").is_file():
        log(f"cache: preprocessing {len(records)} scans into {folder}")
        build_cache(cfg, records, folder, log)
    wait()
    index = json.loads((folder / "index.json").read_text())
    cached = [DataProblem(**p) for p in index["problems"]]
    if cfg.data.on_error == "fail" and cached:
        raise ACATInputError(f"{cached[0].line()} (data.on_error=skip trains without it)")
    problems = problems + cached
    if is_main:
        for p in problems:
            log(f"data: skipped {p.line()}")
    usable = [r for r in records if r.case_id in index["rows"]]
    data = ScanData(folder / "images.npy", usable, [index["rows"][r.case_id] for r in usable], problems, key,
                    cfg.input.spec(), cfg.data.task, len(records))
    if not data.split("train")[0]:
        raise ACATInputError("no usable training scan (check the manifest's split column and the problems above)")
    return data


# ---------------------------------------------------------------------------------------------------
# datasets


class ScanDataset(Dataset):
    """Cached scans (memory-mapped), optionally with their saliency maps.

    item: {"x": (S, 1, H, W) float32 in [0, 1], "y": int64 label, "row": int64 cache row,
           ["saliency": (S, 1, H, W) float32 in [0, 1]]}
    """

    def __init__(self, images_path: Path, rows: Sequence[int], labels: Sequence[int], saliency=None) -> None:
        self.images_path = Path(images_path)
        self.rows = list(rows)
        self.labels = list(labels)
        self.saliency = saliency  # an object with __getitem__(row) -> (S, 1, H, W) array
        self._images: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        # DataLoader workers get the path, never a pickled copy of the mapped array
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def __getitem__(self, i: int) -> dict:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        row = self.rows[i]
        item = {"x": torch.from_numpy(np.array(self._images[row], dtype=np.float32)),
                "y": torch.tensor(self.labels[i], dtype=torch.int64),
                "row": torch.tensor(row, dtype=torch.int64)}
        if self.saliency is not None:
            item["saliency"] = torch.from_numpy(np.array(self.saliency[row], dtype=np.float32))
        return item
