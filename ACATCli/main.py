"""``acat``: read, convert, explain (one scan or a batch) and view CT scans from the command line.

Exit codes: 0 success, 2 bad input (one line on stderr saying what to fix), 1 internal error, 130 / 143
stopped by Ctrl+C / SIGTERM (what was being written under a temporary name is removed first).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Iterator, Sequence

from ACATLogic import __version__
from ACATLogic.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, ACATInputError
from ACATLogic.io.limits import BUDGET_ENV, parse_budget_gib
from ACATLogic.options import add_explain_arguments

from . import batch, commands
from .terminal import configure_logging

log = logging.getLogger("acat")


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print errors only, no warnings or progress")
    group.add_argument("-v", "--verbose", action="store_true", help="print details (and tracebacks of internal errors)")
    parser.add_argument("--max-memory-gb", metavar="GB", help="memory a scan may take when it is read (default: "
                        "8 or half this computer's memory, whichever is less; also ACAT_MAX_MEMORY_GB); a damaged "
                        "header declaring more is refused before anything is decoded")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acat", formatter_class=_Formatter,
        description="ACAT: explain what a CT classifier sees (Adversarial Counterfactual Attention).",
        epilog="Run 'acat COMMAND --help' for one command.\n"
               "Exit codes: 0 success, 2 bad input, 1 internal error, 130/143 interrupted.")
    parser.add_argument("--version", action="version", version=f"acat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser(
        "info", formatter_class=_Formatter, help="show what a CT scan holds: size, spacing, orientation, series",
        description="Read a CT scan and print its size, voxel spacing, orientation and origin (LPS),\n"
                    "modality, the DICOM series that was picked, HU range and any warnings.\n"
                    "No patient name, ID or birth date is ever printed.",
        epilog="example:\n  acat info ~/scans/head_ct/            # a DICOM folder\n"
               "  acat info chest.nrrd --json")
    info.add_argument("input", nargs="+", help="a DICOM folder or file (also DICOMDIR), NRRD, or NIfTI "
                                                "(.nii/.nii.gz); several DICOM files are read as one series")
    info.add_argument("--series", metavar="UID", help="the SeriesInstanceUID to read from a DICOM folder "
                                                        "(default: the largest CT series)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    _common(info)
    info.set_defaults(handler=commands.info)

    convert = sub.add_parser(
        "convert", formatter_class=_Formatter, help="convert a CT scan to NRRD or NIfTI with exact geometry",
        description="Read any supported input and write it as NRRD (.nrrd) or NIfTI (.nii, .nii.gz):\n"
                    "float32 Hounsfield units, the input's own grid and patient geometry.\n"
                    "The output is written to a temporary name and renamed: never half a file.",
        epilog="example:\n  acat convert ~/scans/head_ct/ head_ct.nrrd\n  acat convert scan.nii.gz scan.nrrd --json")
    convert.add_argument("input", nargs="+", help="a DICOM folder or file, NRRD, or NIfTI; "
                                                   "several DICOM files are read as one series")
    convert.add_argument("output", help="the file to write: .nrrd, .nii or .nii.gz")
    convert.add_argument("--series", metavar="UID", help="the SeriesInstanceUID to read from a DICOM folder")
    convert.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    convert.add_argument("--json", action="store_true",
                         help="print what was written (file, size, spacing, orientation, origin) as JSON")
    _common(convert)
    convert.set_defaults(handler=commands.convert)

    explain = sub.add_parser(
        "explain", formatter_class=_Formatter,
        help="predict and explain a CT scan: saliency map and counterfactual volumes",
        description="Classify a CT scan and explain the prediction with ACAT's counterfactual saliency\n"
                    "(or a comparison method). Writes into OUT: saliency.nrrd, counterfactual_<class>.nrrd,\n"
                    "attention_*.nrrd (ACAT models), report.json and overview.png - every volume on the\n"
                    "input's own grid. Research use only.",
        epilog="example:\n  acat explain ~/scans/head_ct/ --out results/               # the default model\n"
               "  acat explain chest/ --model lung-covid-phantom --out r/ --dicom   # + DICOM results for PACS\n"
               "  acat explain --batch ~/scans/studies/ --out results/       # one folder per study + summary.csv\n"
               "  acat explain studies.csv --out results/ --workers 2        # a list: path[,id][,series]")
    explain.add_argument("input", nargs="+", help="a DICOM folder or file, NRRD, or NIfTI; with --batch a folder of "
                                                   "studies; a .csv file lists studies (a batch)")
    explain.add_argument("--out", required=True, help="the results folder (new or empty; see --overwrite)")
    explain.add_argument("--model", help="a model bundle folder or the id of a bundled model")
    add_explain_arguments(explain)  # every ExplainOptions field, defined once (ACATLogic/options.py)
    explain.add_argument("--series", metavar="UID", help="the SeriesInstanceUID to read from a DICOM folder (with "
                                                         "--dicom-source: the series of that folder to refer to)")
    explain.add_argument("--overwrite", action="store_true", help="replace the contents of --out")
    dicom = explain.add_argument_group("DICOM results (for PACS; need a DICOM input)")
    dicom.add_argument("--dicom", action="store_true",
                       help="also write OUT/dicom/: the saliency as a Parametric Map, its top region as a SEG and a "
                            "secondary-capture series with the overlay burned in, all in the source's study and "
                            "referring to the source series; they carry the source's patient and study attributes "
                            "(nothing more) unless --deidentify")
    dicom.add_argument("--deidentify", action="store_true",
                       help="with --dicom: leave out the patient's name, ID, birth date and the other identifying "
                            "attributes (PS3.15 Basic Profile; the UIDs are kept so that the results stay with "
                            "their scan)")
    dicom.add_argument("--dicom-source", metavar="SERIES",
                       help="with --dicom and an NRRD or NIfTI input that is a copy of a DICOM series (what the "
                            "Slicer module and the web viewer hand over): that series - a folder, a file, or a .txt "
                            "list of its files, one a line; --series picks one series of a folder")
    dicom.add_argument("--dicom-top-percent", type=float, default=5.0, metavar="P",
                       help="with --dicom: the SEG marks the most salient P%% of the map's non-zero voxels "
                            "(default 5)")
    many = explain.add_argument_group("many studies (a batch)")
    many.add_argument("--batch", action="store_true",
                      help="INPUT is a folder of studies (each sub-folder, NRRD or NIfTI file is one): OUT gets one "
                           "results folder per study, named by the list's id column or by a hash (never by the "
                           "input's name), and summary.csv / summary.jsonl; finished studies are skipped when run "
                           "again, a failed one is reported and the run goes on")
    many.add_argument("--workers", type=int, default=1, metavar="N",
                      help="batch: explain N studies at once in N processes sharing the CPU threads (default 1)")
    explain.add_argument("--json", action="store_true",
                         help="print the result (one scan) or the summary (a batch) as JSON on stdout")
    explain.add_argument("--progress-format", choices=["bar", "jsonl"], default="bar",
                         help="bar (default): a progress bar on a terminal only; jsonl: one JSON object per "
                              "line on stdout - progress events, then the result - for programs such as the "
                              "Slicer module")
    _common(explain)
    explain.set_defaults(handler=_explain)

    view = sub.add_parser(
        "view", formatter_class=_Formatter, help="open the web viewer: Slicer views and Explain in a browser",
        description="Start a local web app showing a CT in 3D Slicer's views (axial, coronal, sagittal, 3D)\n"
                    "with the Explain panel: prediction, saliency overlay, counterfactual beside the original,\n"
                    "difference map, attention masks, probability per step, results as a zip. Prints the URL.\n"
                    "Listens on 127.0.0.1 only, unless --host says otherwise. The URL it prints holds a\n"
                    "secret made for this launch: only a page opened from it can use the viewer, and that page\n"
                    "opens files only in INPUT's folder and the --allow-dir folders.\n"
                    "Needs the viewer's packages: pip install -e '.[slicer]'. Research use only.",
        epilog="example:\n  acat view ~/scans/head_ct/            # then open the URL it prints\n"
               "  acat view --port 8090 --model Resources/Models/brain-stroke-phantom")
    view.add_argument("input", nargs="?", help="a DICOM folder or file, NRRD or NIfTI to open at start")
    view.add_argument("--port", type=int, default=8080, help="the port to listen on (default 8080)")
    view.add_argument("--host", help="the address to listen on (default 127.0.0.1: this computer only; "
                                     "0.0.0.0 lets other computers in)")
    view.add_argument("--model", help="a model bundle folder or the id of a bundled model, selected first")
    view.add_argument("--allow-dir", action="append", metavar="DIR",
                      help="a folder whose scans the page may open, besides INPUT's folder (repeatable)")
    _common(view)
    view.set_defaults(handler=commands.view)

    return parser


def quiet_libraries(verbose: bool) -> None:
    """The libraries' own warnings (PyTorch's UserWarnings, its C++ log lines) stay off stderr unless
    --verbose: the user gets ACAT's warnings and at most one error line."""
    if not verbose:
        warnings.simplefilter("ignore")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # read when torch is imported (lazily, later)


def _explain(args: argparse.Namespace) -> int:
    return batch.explain_batch(args) if batch.is_batch(args) else commands.explain(args)


class Terminated(KeyboardInterrupt):
    """SIGTERM (the Slicer module's Cancel, a job scheduler, ``kill``), raised where the program is, so that
    what is being written under a temporary name is removed on the way out - as for Ctrl+C."""


def _terminate(signum, frame) -> None:  # noqa: ARG001 - the signal handler's signature
    raise Terminated()


@contextlib.contextmanager
def _sigterm_cancels() -> Iterator[None]:
    """SIGTERM raises `Terminated` while a command runs (main thread only; other threads cannot)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    quiet_libraries(getattr(args, "verbose", False))
    try:
        if getattr(args, "max_memory_gb", None) is not None:  # for this process and the ones it starts
            os.environ[BUDGET_ENV] = str(parse_budget_gib(args.max_memory_gb, "--max-memory-gb"))
        with _sigterm_cancels():
            return int(args.handler(args) or EXIT_OK)
    except ACATInputError as exc:
        print(f"acat: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader of our output went away (`acat info X | head`): nothing left to tell anyone. Point stdout
        # at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as exc:
        # 128 + the signal's number, as a shell reports a process that the signal stopped
        print("acat: interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if getattr(args, "verbose", False):
            traceback.print_exc()
        text = " ".join(str(exc).split())[:200]
        print(f"acat: internal error: {type(exc).__name__}: {text} (run with --verbose for details; "
              "please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
