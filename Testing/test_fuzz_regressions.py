"""What the fuzzers found (Testing/fuzz/run_fuzz.py), kept as regression tests, and a short property run.

Each regression test rebuilds the crashing input from a real file with the smallest change that
crashed the reader, and checks that it is now refused with one clear `ACATInputError` line. Findings
that hung or killed the process (NIfTI sform holding infinity; NRRD "encoding: ascii" over binary
data, a segfault in ITK) are cases of the bad-input corpus instead (Testing/bad_input_corpus.py): it
runs `acat` in a subprocess with a time limit, so a regression fails a test rather than the test run. The
property tests run the fuzzers' own strategies for ~50 examples per target in `make test`; the long
run is `make fuzz`. Hypothesis stores its database in the user cache, never in the repository.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from ACATData import sample_data
from ACATLogic import ACATInputError, read_volume

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(sample_data.cache_dir() / "hypothesis"))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

from fuzz.targets import TARGETS, Span, card_example, card_input, dicom_seeds, replace_value  # noqa: E402

SETTINGS = settings(max_examples=50, deadline=None, derandomize=False,
                    database=DirectoryBasedExampleDatabase(str(sample_data.cache_dir() / "hypothesis" / "examples")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _span(data: bytes, keyword: str) -> Span:
    """Where ``keyword``'s value sits in an explicit-VR little-endian file (VR and length just before)."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    tag = pydicom.datadict.tag_for_keyword(keyword)
    raw = ds._dict[tag]  # noqa: SLF001 - the raw element keeps its file offset
    return Span(tag, raw.value_tell, raw.length, raw.value_tell - 2, 2, True)


def _refused(path: Path, match: str) -> str:
    with pytest.raises(ACATInputError, match=match) as info:
        read_volume(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


# ---- crashes the fuzzers found ----------------------------------------------------------------------
def test_odd_length_binary_value_is_a_damaged_header(dcm, tmp_path):
    """fuzz: BytesLengthException at dicom_scan.py (SamplesPerPixel, a US, given 15 bytes)."""
    data = dcm("CT_small.dcm").read_bytes()
    bad = tmp_path / "slice.dcm"
    bad.write_bytes(replace_value(data, _span(data, "SamplesPerPixel"), b"1\\0\\0\\0\\1\\0\\0\\0"[:15], False))
    _refused(bad, r"damaged DICOM header \(SamplesPerPixel is not a whole number\)")


@pytest.mark.parametrize("keyword", ["PhotometricInterpretation", "SOPClassUID"])
def test_unknown_value_representation_is_a_damaged_header(dcm, tmp_path, keyword):
    """fuzz: NotImplementedError ("Unknown Value Representation '0x43 0x15'") at dicom_scan.py."""
    data = bytearray(dcm("CT_small.dcm").read_bytes())
    span = _span(bytes(data), keyword)
    data[span.length_at - 2:span.length_at] = b"C\x15"  # the two VR characters of the element
    bad = tmp_path / "slice.dcm"
    bad.write_bytes(bytes(data))
    _refused(bad, r"damaged DICOM header \(Unknown Value Representation '0x43 0x15'")


def test_nifti_library_errors_stay_off_stderr(tmp_path, capfd):
    """fuzz (stderr noise): NIfTI's C library printed '** ERROR: ... bad dim[1]' beside our one line."""
    import numpy as np

    from ACATLogic import CTVolume, write_volume

    volume = CTVolume(np.zeros((4, 8, 8), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3))
    path = write_volume(volume, tmp_path / "x.nii.gz")
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[42:44] = struct.pack("<h", 0)  # dim[1] = 0
    path.write_bytes(gzip.compress(bytes(raw)))
    capfd.readouterr()
    _refused(path, r"cannot read the NIfTI file \(nifti_convert_nhdr2nim: bad dim\[1\]\)")
    assert capfd.readouterr().err == ""


def test_nrrd_data_file_name_with_a_nul_byte(tmp_path):
    """fuzz: ValueError ("embedded null byte") at itk_guards.py, from stat() on the detached data file's name."""
    header = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nendian: little\n"
              b"space directions: (1,0,0) (0,1,0) (0,0,1)\ndata file: voxels\x00.raw\n\n")
    (tmp_path / "scan.nhdr").write_bytes(header)
    _refused(tmp_path / "scan.nhdr", r"cannot read the NRRD file")


@pytest.mark.parametrize("run, expected", [(64, False), (65, True)])
def test_ascii_nrrd_token_check_sees_across_read_chunks(run, expected):
    """fuzz (a segfault in teem): the guard's 4 MB chunks must not hide a long run split between two."""
    import io

    from ACATLogic.io.itk_guards import _has_long_token

    chunk = 1 << 22
    data = b"1 " * ((chunk - 30) // 2) + b"7" * run + b" 2\n"  # the run starts 30 bytes before the boundary
    assert _has_long_token(io.BytesIO(data), 64) is expected
    assert _has_long_token(io.BytesIO(b"-1000 " * 10), 64) is False


def test_deeply_nested_model_card_is_an_input_error(tmp_path):
    """fuzz: RecursionError at bundle.py (json.loads) for a 400 kB card nesting 200000 lists."""
    from ACATLogic.bundle import read_card

    card_input({"ops": [], "bytes": [], "deep": 200000}, tmp_path)
    with pytest.raises(ACATInputError, match="nested too deeply"):
        read_card(tmp_path)


@pytest.mark.parametrize("field, value, why", [
    ("size", [1e308, -5], "invalid 'input'"), ("size", [0, 64], "size must be"), ("slices", 0, "slices must be"),
    ("hu_window", [40, 0], "hu_window"), ("hu_window", [40, float("nan")], "hu_window"),
    ("fov_margin", -1, "fov_margin"), ("alignment", "sideways", "alignment")])
def test_implausible_input_specs_are_refused(tmp_path, field, value, why):
    """fuzz: read_card accepted input.size [1e308, -5]; every field of 'input' is bounded now."""
    import json as _json

    from ACATLogic.bundle import read_card

    card = _json.loads((REPO / "Resources/Models/brain-stroke-phantom/model.json").read_text())
    card["input"][field] = value
    (tmp_path / "model.json").write_text(_json.dumps(card))
    with pytest.raises(ACATInputError, match=why):
        read_card(tmp_path)


def test_a_transfer_syntax_that_is_not_one_is_a_clear_error(cranium_copy):
    """fuzz (issue 17): ValueError ("UID is not a transfer syntax") at dicom_bounds.py, from the pixel cost check
    on a slice whose TransferSyntaxUID was replaced by a SOP class UID."""
    victim = sorted(cranium_copy.iterdir())[5]
    data = victim.read_bytes()
    explicit_le = b"1.2.840.10008.1.2.1\x00"  # the file meta's TransferSyntaxUID, as our writer stores it
    assert data.count(explicit_le) == 1
    victim.write_bytes(data.replace(explicit_le, b"1.2.840.10008.5.1.4"[:19] + b"\x00"))  # a UID, not a syntax
    with pytest.raises(ACATInputError) as info:
        read_volume(cranium_copy)
    assert "\n" not in str(info.value) and str(victim) in str(info.value)


def test_a_panic_in_the_rust_rle_decoder_is_a_clear_error_and_prints_nothing(tmp_path, capfd):
    """fuzz (issue 17, 600 s run): pyo3_runtime.PanicException ("index out of bounds") from pylibjpeg-rle on one
    flipped byte of an RLE slice. PanicException is a BaseException, so it passed every `except Exception`,
    and Rust printed its panic message and backtrace straight onto stderr."""
    example = {"seed": 2, "edits": [], "bytes": [["flip", 1841860, 118]], "layout": "series", "others": [],
               "frame_size": [40000, 1024]}
    # the flip's offset is taken modulo the file's length: the seed must have the length it was recorded on
    # (a process whose random UIDs came out short once made it 4 bytes shorter, and this test failed)
    assert len(dicom_seeds()[2][1]) == 2756
    assert TARGETS["dicom"].run(example, tmp_path / "work") == "input error"
    assert capfd.readouterr().err == ""


def test_a_model_card_input_that_is_not_an_object_is_refused(tmp_path):
    """fuzz (issue 17): AttributeError at preprocess.py (InputSpec.from_dict) for "input": [] ."""
    import json as _json

    from ACATLogic.bundle import read_card

    card = _json.loads((REPO / "Resources/Models/brain-stroke-phantom/model.json").read_text())
    card["input"] = []
    (tmp_path / "model.json").write_text(_json.dumps(card))
    with pytest.raises(ACATInputError, match=r"invalid 'input' in the model card \(it must be an object\)"):
        read_card(tmp_path)


# ---- short property runs of the fuzzers' own strategies (the long run is `make fuzz`) ---------------
def _work(tmp_path_factory) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))


@SETTINGS
@given(example=TARGETS["dicom"].strategy)
def test_mutated_dicom_is_read_or_refused_cleanly(tmp_path_factory, example):
    work = _work(tmp_path_factory)
    assert TARGETS["dicom"].run(example, work) in ("read", "input error")
    shutil.rmtree(work)


@SETTINGS
@given(example=TARGETS["image-files"].strategy)
def test_mutated_nrrd_and_nifti_are_read_or_refused_cleanly(tmp_path_factory, example):
    work = _work(tmp_path_factory)
    assert TARGETS["image-files"].run(example, work) in ("read", "input error")
    shutil.rmtree(work)


@SETTINGS
@given(example=card_example(depths=(0, 50, 200000)))
def test_mutated_model_card_is_read_or_refused_cleanly(tmp_path_factory, example):
    work = _work(tmp_path_factory)
    assert TARGETS["model-card"].run(example, work) in ("read", "input error")
    shutil.rmtree(work)
