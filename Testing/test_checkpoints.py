"""Training checkpoints are verified like model bundles, and a full disk never costs the last good one.

A checkpoint carries the sha256 of its zip records in the archive's comment; `load_checkpoint` checks it
with Python's zipfile before ``torch.load(weights_only=True)`` parses anything. Tampered, truncated and
pickled files are refused with one line naming the file, and a pickle that would create a marker file
when unpickled never does. A write that fails with ENOSPC (a failing file object standing in for a
full disk) leaves the previous checkpoint intact and loadable, says so in one line, and the run resumes
from it once there is space again.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import zipfile

import pytest
import torch

from ACATLogic import ACATInputError
from training import checkpoint, train
from training.checkpoint import (BEST_KIND, CHECKPOINT_KIND, DIGEST_PREFIX, FORMAT_VERSION, load_checkpoint,
                                 save_checkpoint, verify_checkpoint)

from toy_training import tiny_config, write_brain_toy


class _Marker:
    """Unpickling this creates a file: proof that a pickle was opened."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def payload(**extra) -> dict:
    return {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "progress": {"epoch": 1},
            "model": {"state_dict": {"w": torch.arange(64, dtype=torch.float32) + 0.25}}, **extra}


def rewrite_record(path, name: str, change) -> None:
    """Rewrite one record of a checkpoint's zip with valid CRCs, keeping its comment (a deliberate edit)."""
    with zipfile.ZipFile(path) as src:
        records = [(info, src.read(info)) for info in src.infolist()]
        comment = src.comment
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info, data in records:
            dst.writestr(info, change(data) if info.filename.endswith(name) else data)
        dst.comment = comment
    path.write_bytes(buf.getvalue())


def test_a_checkpoint_carries_its_sha256_and_loads_back(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload())
    with zipfile.ZipFile(path) as archive:
        assert archive.comment.startswith(DIGEST_PREFIX)
        assert archive.comment[len(DIGEST_PREFIX):].decode() == verify_checkpoint(path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["state_dict"]["w"], torch.arange(64, dtype=torch.float32) + 0.25)
    assert torch.load(path, weights_only=True)["progress"] == {"epoch": 1}  # still a plain torch file
    save_checkpoint(tmp_path / "again.pt", payload())
    assert verify_checkpoint(tmp_path / "again.pt") == verify_checkpoint(path)  # the same content, the same digest


def test_a_tampered_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload())
    flipped = bytearray(path.read_bytes())  # one flipped bit in the tensor data: the zip CRC catches it
    at = flipped.find(torch.tensor([33.25]).numpy().tobytes())
    flipped[at + 2] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(ACATInputError, match=r"flipped.pt: not a readable ACAT checkpoint \(Bad CRC-32"):
        load_checkpoint(tmp_path / "flipped.pt")
    # an edit that rewrites the CRCs too: only the sha256 tells
    rewrite_record(path, "data/0", lambda data: data[:-4] + torch.tensor([1e9]).numpy().tobytes())
    with pytest.raises(ACATInputError, match=r"last.pt: sha256 mismatch: the checkpoint is not the one training "
                                             r"wrote \(tampered or corrupted file\); it was not unpickled"):
        load_checkpoint(path)


def test_truncated_missing_and_foreign_checkpoints_are_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload())
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(ACATInputError, match=r"cut.pt: not a readable ACAT checkpoint .*truncated, damaged"):
            load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes(data[:-30])  # the end of the digest in the zip comment is missing
    with pytest.raises(ACATInputError, match=r"cut.pt: sha256 mismatch"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(ACATInputError, match="nothing.pt: the checkpoint is missing"):
        load_checkpoint(tmp_path / "nothing.pt")
    plain = io.BytesIO()  # torch.save without our digest, claiming the current format
    torch.save(payload(), plain)
    (tmp_path / "plain.pt").write_bytes(plain.getvalue())
    with pytest.raises(ACATInputError, match=r"plain.pt: checkpoint format 2 without a sha256"):
        load_checkpoint(tmp_path / "plain.pt")
    save_checkpoint(tmp_path / "best.pt", payload(kind=BEST_KIND))
    with pytest.raises(ACATInputError, match="best.pt: not an ACAT training checkpoint of kind 'acat-training-checkpoint'"):
        load_checkpoint(tmp_path / "best.pt", CHECKPOINT_KIND)


def test_format_1_checkpoints_without_a_digest_are_still_read(tmp_path):
    """Written before the digest existed (a run started with an older ACAT): weights_only=True alone."""
    old = io.BytesIO()
    torch.save(payload(format_version=1), old)
    (tmp_path / "last.pt").write_bytes(old.getvalue())
    assert verify_checkpoint(tmp_path / "last.pt") is None
    assert load_checkpoint(tmp_path / "last.pt")["format_version"] == 1


def test_a_pickle_in_place_of_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.pt"  # a bare pickle (no zip): refused before any unpickling
    raw.write_bytes(pickle.dumps({"kind": CHECKPOINT_KIND, "x": _Marker(str(marker))}))
    with pytest.raises(ACATInputError, match=r"raw.pt: not a readable ACAT checkpoint \(File is not a zip file\)"):
        load_checkpoint(raw)
    # a torch zip holding the object, with a valid digest (someone who knows the format): weights_only refuses it
    evil = tmp_path / "last.pt"
    save_checkpoint(evil, {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "x": _Marker(str(marker))})
    verify_checkpoint(evil)  # the digest is right: only weights_only=True stands between the file and open()
    with pytest.raises(ACATInputError, match=r"last.pt: the checkpoint holds objects other than tensors and plain "
                                             r"data; refused without running them"):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.fixture(scope="module")
def toy_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    manifest = write_brain_toy(root / "toy", n=16)
    # batch 2 -> 4 steps per epoch, a checkpoint after every step
    return root, tiny_config(root / "tiny.yaml", manifest, root / "unused", cache_dir=root / "cache",
                             checkpoint_every_steps=1, baseline={"epochs": 2, "batch_size": 2})


def test_training_refuses_a_tampered_or_pickled_last_pt_in_one_line(toy_cfg, tmp_path, capsys):
    root, cfg = toy_cfg
    run = tmp_path / "run"
    args = ["--config", str(cfg), f"out_dir={run}", "baseline.epochs=1"]
    assert train.main(args) == 0
    last = run / "baseline" / "last.pt"
    (run / "baseline" / "done.json").unlink()  # unfinished: the next command resumes from last.pt
    rewrite_record(last, "data.pkl", lambda data: data.replace(b"baseline", b"baselinX"))
    capsys.readouterr()
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {last}: sha256 mismatch: the checkpoint is not the one training wrote")
    assert "Traceback" not in "\n".join(err)

    marker = tmp_path / "PWNED"
    last.write_bytes(pickle.dumps(_Marker(str(marker))))
    assert train.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: {last}: not a readable ACAT checkpoint (File is not a zip file)")
    assert not marker.exists()
    # --fresh is the way out
    assert train.main(args + ["--fresh"]) == 0
    assert load_checkpoint(last)["progress"]["epoch"] == 1


class _DiskFull:
    """os.fdopen for the n-th temporary checkpoint file and after: a file whose write fails with ENOSPC."""

    def __init__(self, fail_from: int):
        self.fail_from, self.opened = fail_from, 0
        self._fdopen = os.fdopen

    def __call__(self, fd, *args, **kwargs):
        handle = self._fdopen(fd, *args, **kwargs)
        if ".last.pt." not in os.readlink(f"/proc/self/fd/{fd}"):
            return handle
        self.opened += 1
        if self.opened < self.fail_from:
            return handle

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, data):
                handle.write(data[: len(data) // 3])  # part of it reached the disk, then no more space
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return Full()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the file behind a descriptor via /proc")
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(toy_cfg, tmp_path, monkeypatch, capsys):
    root, cfg = toy_cfg
    run = tmp_path / "run"
    args = ["--config", str(cfg), f"out_dir={run}"]
    last = run / "baseline" / "last.pt"
    full = _DiskFull(fail_from=3)  # checkpoints after steps 1 and 2 are written; the third fails
    monkeypatch.setattr(checkpoint.os, "fdopen", full)
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {last}: cannot write (No space left on device); the previous last.pt, if any, is "
                       "unchanged: free some space (or fix the folder's permissions) and run the command again to "
                       "continue")
    kept = load_checkpoint(last)  # intact, verified, the one written after step 2
    assert kept["progress"]["global_step"] == 2 and kept["progress"]["batches_done"] == 2
    assert sorted(p.name for p in last.parent.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    assert not (run / "baseline" / "done.json").exists()

    monkeypatch.setattr(checkpoint.os, "fdopen", full._fdopen)  # space again
    assert train.main(args) == 0
    assert "resumed from" in capsys.readouterr().err
    assert load_checkpoint(last)["progress"]["epoch"] == 2 and (run / "baseline" / "done.json").is_file()
