"""What one Explain runs: a model and the explain options, turned into the background ``acat explain`` command.

The options are ACATLogic's `ExplainOptions` (ACATLogic/options.py: every option, defined once); nothing here
lists them. The module's panel holds some of them under their camelCase names (``step_size`` is
``stepSize``), and `ExplainRequest.fromPanel` takes every field the panel has; the web viewer builds the
options itself. Either way the child's command line is ``ExplainOptions.to_cli_args``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ACATLogic.options import ExplainOptions

#: the panel's choice (and 0 or "" in a number or text field) that leaves an option to the model card
MODEL_DEFAULT = "model default"


def panelName(field: str) -> str:
    """The panel's (parameter node's) name of an `ExplainOptions` field: ``step_size`` -> ``stepSize``."""
    return re.sub(r"_(\w)", lambda m: m.group(1).upper(), field)


def _leftToTheModel(value) -> bool:
    return value is None or (not isinstance(value, bool) and value in (0, "", MODEL_DEFAULT))


@dataclass(frozen=True)
class ExplainRequest:
    """``model``: a bundle folder, or the id of a bundled model; ``options``: `ACATLogic.options.ExplainOptions`."""

    model: str
    options: ExplainOptions

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("choose a model (a bundled model or a model folder via 'Add model...')")

    @classmethod
    def fromPanel(cls, panel) -> "ExplainRequest":
        """From the module's parameter node (any object with its attribute names): ``panel.model`` and every
        `ExplainOptions` field the panel has; `MODEL_DEFAULT`, 0 and "" mean "the model card's default"."""
        from ACATLogic.options import ExplainOptions  # standard library only: fine before torch is installed

        values = {}
        for f in dataclasses.fields(ExplainOptions):
            value = getattr(panel, panelName(f.name), None)
            if _leftToTheModel(value):
                continue
            if f.metadata["kind"] == "list":
                value = tuple(t.strip() for t in str(value).split(",") if t.strip()) or None
            values[f.name] = value
        return cls(str(panel.model or ""), ExplainOptions(**{k: v for k, v in values.items() if v is not None}))

    def onDevice(self, device: str) -> "ExplainRequest":
        """The same explanation on another device (the CPU retry after the GPU ran out of memory)."""
        return dataclasses.replace(self, options=self.options.replace(device=device))

    def commandLine(self, inputPath, outDir) -> list[str]:
        """``explain INPUT --out OUT --model M --progress-format jsonl [options]``, the arguments of
        ``python -m ACATCli``: one JSON progress line per step on stdout, then the result."""
        return ["explain", str(inputPath), "--out", str(outDir), "--model", str(self.model),
                "--progress-format", "jsonl", *self.options.to_cli_args()]
