"""The bad-input corpus through the real ``acat`` command (issue 9; cases in bad_input_corpus.py).

Every case is either read correctly (geometry asserted) or refused with exit code 2 and one line
naming the file and the problem; never a traceback, never a hang, never a write into the input
folder, never a partial output. The subprocesses run two at a time (module fixture); each case is
one test, so a failure names its input. The counts for docs/RELIABILITY.md come from
``python Testing/bad_input_corpus.py``.
"""

from __future__ import annotations

import os

import pytest

from bad_input_corpus import CASES, SOURCES, Corpus, counts, run_cases


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, cranium):
    """Run the selected cases once, in parallel (only the ones this pytest run collected)."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params}
    corpus = Corpus(tmp_path_factory.mktemp("corpus"), cranium=cranium)
    return run_cases([c for c in CASES if c.id in wanted], corpus, workers=min(2, os.cpu_count() or 1))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_input(case, outcomes):
    outcome = outcomes[case.id]
    assert outcome.passed, outcome.report()


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
