"""`ACATLogic.options.ExplainOptions`: one definition of the explain options for every front end."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from ACATLogic.options import (METHODS, RESOLVED_KEYS, VARIANT_DEFAULTS, ExplainOptions, add_explain_arguments,
                               cli_flag)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_explain_arguments(parser)
    return parser


def test_every_field_has_exactly_one_cli_argument_and_back():
    parser = _parser()
    flags = {a.dest: a.option_strings for a in parser._actions if a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(ExplainOptions)}
    assert set(flags) == fields
    for f in dataclasses.fields(ExplainOptions):
        assert cli_flag(f) in flags[f.name]


def test_the_acat_explain_command_offers_every_option():
    """The real CLI: its explain arguments are exactly the ExplainOptions fields (plus input/output ones)."""
    from ACATCli.main import build_parser

    explain = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "explain")[1]
    dests = {a.dest for a in explain._actions}
    assert {f.name for f in dataclasses.fields(ExplainOptions)} <= dests
    own = dests - {f.name for f in dataclasses.fields(ExplainOptions)}
    # where the results go and in which forms: output options of the command line, not of the explanation
    assert own == {"help", "input", "out", "model", "series", "overwrite", "progress_format", "quiet", "verbose",
                   "json", "dicom", "deidentify", "dicom_source", "dicom_top_percent", "batch", "workers",
                   "max_memory_gb"}


@pytest.mark.parametrize("options", [
    ExplainOptions(),
    ExplainOptions(method="gradient", output="class", organ_mask=False, coverage="sampled", sparsity=0.4),
    ExplainOptions(variant="paper", targets=("none", "left"), steps=7, alpha=5.0, step_size=0.3, optimizer="adam",
                   start="image", reference="image", early_stop=True, stop_probability=0.9,
                   saliency_classifier="acat", precision="bf16", device="cpu"),
])
def test_to_cli_args_round_trips(options):
    args = options.to_cli_args()
    assert ExplainOptions.from_namespace(_parser().parse_args(args)) == options
    assert (args == []) == (options == ExplainOptions())


def test_resolution_order_options_then_card_then_variant():
    card = {"variant": "residual", "step_size": 0.3, "steps": 12}
    assert ExplainOptions().resolved(card)["step_size"] == 0.3
    assert ExplainOptions(step_size=0.05).resolved(card)["step_size"] == 0.05
    # a card tuned for one variant does not change the other
    assert ExplainOptions(variant="paper").resolved(card)["step_size"] == VARIANT_DEFAULTS["paper"]["step_size"]
    # a card from before variants existed describes the paper's
    old = {"alpha": 100.0, "steps": 20, "step_size": 0.1, "optimizer": "sgd", "reference": "reconstruction"}
    assert ExplainOptions().resolved(old) == ExplainOptions().resolved({})
    assert ExplainOptions(variant="paper").resolved(old)["optimizer"] == "sgd"
    resolved = ExplainOptions().resolved()
    assert tuple(resolved) == RESOLVED_KEYS and resolved["variant"] == "residual"
    assert resolved["start"] == "image" and resolved["output"] == "decision" and resolved["early_stop"] is True
    # sparsity is a share of the normalised step: asked with sgd / adam it is refused (above); a card whose
    # default optimizer is another one turns it off
    assert ExplainOptions(sparsity=0.4).resolved()["sparsity"] == 0.4
    assert ExplainOptions(sparsity=0.4).resolved({"variant": "residual", "optimizer": "adam"})["sparsity"] == 0.0


@pytest.mark.parametrize("bad, message", [
    ({"method": "magic"}, "method must be one of"),
    ({"steps": -1}, "steps must be"),
    ({"step_size": 0.0}, "step_size must be"),
    ({"stop_probability": 0.3}, "stop_probability"),
    ({"early_stop": "yes"}, "true or false"),
    ({"alpha": "x"}, "number"),
    ({"targets": ()}, "targets"),
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"sparsity": -0.1}, "sparsity must be in"),
    ({"sparsity": 0.4, "optimizer": "adam"}, "sparsity needs the normalised optimizer"),
    ({"sparsity": 0.4, "variant": "paper"}, "sparsity needs the normalised optimizer"),
])
def test_bad_options_are_refused_in_one_line(bad, message):
    with pytest.raises(ValueError, match=message):
        ExplainOptions(**bad)


def test_options_import_without_torch():
    """The Slicer module reads the options before torch is installed: stdlib only."""
    code = ("import sys; sys.modules['torch'] = None; import ACATLogic.options as o; "
            "print(len(o.METHODS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(METHODS))
