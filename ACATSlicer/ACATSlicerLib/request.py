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
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:
    from ACATLogic.options import ExplainOptions

#: the panel's choice (and 0 or "" in a number or text field) that leaves an option to the model card
MODEL_DEFAULT = "model default"


def panelName(field: str) -> str:
    """The panel's (parameter node's) name of an `ExplainOptions` field: ``step_size`` -> ``stepSize``."""
    return re.sub(r"_(\w)", lambda m: m.group(1).upper(), field)


def _leftToTheModel(value) -> bool:
    return value is None or (not isinstance(value, bool) and value in (0, "", MODEL_DEFAULT))


#: the list of the DICOM source files that the child reads (``--dicom-source``), in the run's work folder
DICOM_SOURCE_LIST = "dicom_source.txt"


@dataclass(frozen=True)
class DicomResults:
    """The DICOM results for PACS (``acat explain --dicom``) of an input that is a copy of a DICOM series.

    ``sources``: that series - one folder or file, or its files (then the child gets them as a list, one path
    per line, written into the run's private work folder); ``seriesUid``: the series, where a folder holds
    several ("": the largest CT series of ``sources``); ``deidentify``: ``--deidentify``. The child - the one
    writer of the explanation - writes them into its results folder, beside the NRRD files."""

    sources: Tuple[str, ...]
    seriesUid: str = ""
    deidentify: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        if not self.sources:
            raise ValueError("the DICOM results need the source DICOM series")

    def sourceArgument(self, workDir) -> str:
        """``--dicom-source``'s value: the one folder or file, else a list of the files written into ``workDir``."""
        if len(self.sources) == 1:
            return self.sources[0]
        listing = Path(workDir) / DICOM_SOURCE_LIST
        listing.write_text("".join(s + "\n" for s in self.sources), encoding="utf-8")
        return str(listing)

    def cliArgs(self, sourceArgument: str) -> list:
        args = ["--dicom", "--dicom-source", str(sourceArgument)]
        if self.seriesUid:
            args += ["--series", self.seriesUid]
        return args + (["--deidentify"] if self.deidentify else [])


@dataclass(frozen=True)
class ExplainRequest:
    """``model``: a bundle folder, or the id of a bundled model; ``options``: `ACATLogic.options.ExplainOptions`;
    ``dicom``: also the DICOM results for PACS (`DicomResults`), or None."""

    model: str
    options: ExplainOptions
    dicom: Optional[DicomResults] = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("choose a model (a bundled model or a model folder via 'Add model...')")

    @classmethod
    def fromPanel(cls, panel, dicom: Optional[DicomResults] = None) -> "ExplainRequest":
        """From the module's parameter node (any object with its attribute names): ``panel.model`` and every
        `ExplainOptions` field the panel has; `MODEL_DEFAULT`, 0 and "" mean "the model card's default".
        ``dicom``: the DICOM results too (`dicom_source.DicomOption.results`)."""
        from ACATLogic.options import ExplainOptions  # standard library only: fine before torch is installed

        values = {}
        for f in dataclasses.fields(ExplainOptions):
            value = getattr(panel, panelName(f.name), None)
            if _leftToTheModel(value):
                continue
            if f.metadata["kind"] == "list":
                value = tuple(t.strip() for t in str(value).split(",") if t.strip()) or None
            values[f.name] = value
        return cls(str(panel.model or ""), ExplainOptions(**{k: v for k, v in values.items() if v is not None}), dicom)

    def onDevice(self, device: str) -> "ExplainRequest":
        """The same explanation on another device (the CPU retry after the GPU ran out of memory)."""
        return dataclasses.replace(self, options=self.options.replace(device=device))

    def withDicomSource(self, sourceArgument: str) -> "ExplainRequest":
        """The same request with the DICOM source as the child reads it (`DicomResults.sourceArgument`)."""
        if self.dicom is None:
            return self
        return dataclasses.replace(self, dicom=dataclasses.replace(self.dicom, sources=(str(sourceArgument),)))

    def commandLine(self, inputPath, outDir) -> list[str]:
        """``explain INPUT --out OUT --model M --progress-format jsonl [options] [--dicom ...]``, the arguments
        of ``python -m ACATCli``: one JSON progress line per step on stdout, then the result."""
        dicom = []
        if self.dicom is not None:
            if len(self.dicom.sources) != 1:
                raise ValueError("the DICOM source files go to the child as a list: use withDicomSource")
            dicom = self.dicom.cliArgs(self.dicom.sources[0])
        return ["explain", str(inputPath), "--out", str(outDir), "--model", str(self.model),
                "--progress-format", "jsonl", *self.options.to_cli_args(), *dicom]
