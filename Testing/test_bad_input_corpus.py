"""The bad-input corpus through the real ``acat`` command (issue 9; cases in bad_input_corpus.py).

Every case is either read correctly (geometry asserted) or refused with exit code 2 and one line
naming the file and the problem; never a traceback, never a hang, never a write into the input
folder, never a partial output. The `END_TO_END` cases run the installed ``acat`` in subprocesses (two
at a time), with a time limit: the command's exit-code and one-line contract, and the inputs that once
hung or crashed the interpreter; they are marked slow (``make test-fast`` leaves them out). The others
call ``acat``'s ``main()`` in this process - the same code and the same judge, stdout and stderr captured
down to the file descriptors. Each case is one test, so a failure names its input. The counts for
docs/RELIABILITY.md come from ``python Testing/bad_input_corpus.py`` (every case in a subprocess).
"""

from __future__ import annotations

import os

import pytest

from bad_input_corpus import CASES, END_TO_END, SOURCES, Corpus, counts, run_cases


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, cranium):
    """Run the selected cases once (only the ones this pytest run collected)."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params}
    corpus = Corpus(tmp_path_factory.mktemp("corpus"), cranium=cranium)
    return run_cases([c for c in CASES if c.id in wanted], corpus, workers=min(2, os.cpu_count() or 1),
                     in_process=lambda case: not case.end_to_end)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.end_to_end else c for c in CASES],
                         ids=[c.id for c in CASES])
def test_input(case, outcomes):
    outcome = outcomes[case.id]
    assert outcome.passed, outcome.report()


def test_end_to_end_cases_cover_the_contract_and_the_hang_and_crash_risks():
    """A refusal and a read of each command through the real process; every input that once hung or crashed."""
    chosen = [c for c in CASES if c.end_to_end]
    assert {c.id for c in chosen} == END_TO_END
    assert {(c.command, c.ok) for c in chosen} == {("info", True), ("info", False), ("explain", True),
                                                    ("explain", False)}
    assert {"fifo-alone", "nrrd-ascii-binary", "nifti-sform-inf", "nrrd-gzip-bomb", "symlink-loop-dir"} <= END_TO_END
    assert len(chosen) <= 16  # a handful: the rest run in process


def test_corpus_covers_the_issue():
    """The corpus holds real package files and constructed cases, both outcomes, and unique ids."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert {c.source for c in CASES} <= set(SOURCES)
    assert sum(c.source != "constructed" for c in CASES) >= 25
    assert any(c.ok for c in CASES) and any(not c.ok for c in CASES)
    assert {"explain"} <= {c.command for c in CASES}
    named = ("truncated", "bad-sequence", "no-file-meta", "j2k-bitdepth", "enhanced-ct", "small-ct-series",
             "series-gap", "mixed-series", "duplicate", "mixed-orientation", "gantry-tilt", "2000-slices",
             "one-slice", "nan-nrrd", "rescale", "zero-byte", "non-dicom-folder", "symlink-loop", "unicode-spaces")
    for needle in named:
        assert any(needle in i for i in ids), needle


def test_counts_add_up():
    from bad_input_corpus import Outcome

    fake = [Outcome(CASES[0], v) for v in ("correct", "clear error", "crash", "hang", "wrong")]
    assert counts(fake) == {"inputs tried": 5, "handled correctly": 1, "clear errors": 1, "crashes": 2,
                            "wrong results": 1}
