"""The trame application: Slicer's views in the page, the ACAT panel beside them.

Built on Kitware's trame-slicer: a `SlicerApp` (scene + Slicer logics), remote-rendered slice and 3D
views, and its `LayoutManager`. Two layouts: "explore" (axial, 3D, coronal, sagittal) while a CT is
looked at, and "results" (the axial view with the overlay beside the counterfactual, linked; coronal,
sagittal and 3D below). Every page action calls `ViewerSession` (the views) or its controller (the run,
ACATSlicerLib's `ExplainController`, as in the Slicer module); the explanation runs in a background process
that an asyncio task polls, so the page stays responsive and Cancel works at any time.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path
from typing import Optional

from trame.app import TrameApp
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from vtkmodules.vtkCommonCore import vtkCommand

from ACATLogic import catalogue
from ACATLogic.errors import ACATInputError
from ACATLogic.options import METHODS, ExplainOptions
from ACATSlicerLib import display
from ACATSlicerLib.controller import AlreadyRunning, ExplainController
from ACATSlicerLib.runner import CANCELLED, SUCCEEDED, ExplainProcess

from . import demo_case, download, session, summary
from .files import AllowedFolders

EXPLORE, RESULTS = "explore", "results"
# zip on the server, then let the browser fetch it through a download link (navigating to it would close the
# page's connection); a page template reaches ``document`` through utils.get
DOWNLOAD_JS = ("trigger('acat_download').then((url) => { if (!url) return; "
               "const link = utils.get('document').createElement('a'); "
               "link.href = url; link.download = 'acat-results.zip'; link.click(); })")
POLL_INTERVAL_S = 0.25
SETTLE_S = 1.0  # for a new layout's views to be sized by the page before they are fitted


def layouts() -> dict:
    red, green, yellow = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
                          ViewLayoutDefinition.sagittal_view())
    threed = ViewLayoutDefinition.threed_view()
    counterfactual = ViewLayoutDefinition.slice_view("Axial", label=session.COUNTERFACTUAL_VIEW, color="#9C6ADE")
    h, v = LayoutDirection.Horizontal, LayoutDirection.Vertical
    return {EXPLORE: Layout(v, [Layout(h, [red, threed]), Layout(h, [green, yellow])]),
            RESULTS: Layout(v, [Layout(h, [red, counterfactual]), Layout(h, [green, yellow, threed])],
                            flex_sizes=["2", "1"])}


class ViewerApp(TrameApp):
    """``model``: the bundle folder or id selected first; ``input_path``: a CT to open at start;
    ``allowed_dirs``: the folders whose files the page may open (`files`; the demo case's is added);
    ``popen``: how the explanation's child process is started (`limits.unlimited_popen`)."""

    def __init__(self, server=None, *, model: Optional[str] = None, input_path: Optional[str] = None,
                 allowed_dirs=(), popen=None):
        super().__init__(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.private_dir = download.private_folder()
        atexit.register(self.close)
        (self.private_dir / "work").mkdir()
        (self.private_dir / "demo").mkdir()
        self.downloads_dir = self.private_dir / "downloads"
        self.downloads_dir.mkdir()
        self.allowed = AllowedFolders([*allowed_dirs, self.private_dir / "demo"])
        self._zip: Optional[Path] = None  # the last results zip: deleted when a new one supersedes it
        # served only under an unguessable path, so another page cannot fetch a patient's results
        self.download_route = f"acat-download-{secrets.token_urlsafe(16)}"
        self.server.serve[self.download_route] = str(self.downloads_dir)

        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(layouts())
        self.layout_manager.set_layout(EXPLORE)

        runner = (lambda: ExplainProcess(popen=popen)) if popen is not None else ExplainProcess
        self.controller = ExplainController(self.slicer_app.scene, runnerFactory=runner,
                                            workRoot=self.private_dir / "work")
        self.session = session.ViewerSession(self.slicer_app.scene, self.controller)
        self._task = None
        self._needs_fit: set = set()  # slice views to fit to the CT when the page next resizes them
        self._focus_ras = None  # where the results put the slices (RAS mm), kept through those fits
        self._observe_resizes()
        self._init_state(model, input_path)
        self._build_ui()
        self.state.change("window")(self._on_window)
        self.state.change("overlay", "right_view", "opacity", "percentile")(self._on_display)
        if input_path:
            self.ctrl.on_server_ready.add(lambda **_: create_task(self._open(input_path)))

    # -- state -------------------------------------------------------------------------------------
    def _model_items(self, model: Optional[str]) -> tuple[list, str]:
        """The page's model list (ACATLogic's catalogue, then ``model`` if it is a folder outside it) and the
        one selected: ``model`` resolved as ``acat explain --model`` does (a folder, a card id or a folder
        name), else the catalogue's default. Raises ACATInputError for an unknown model."""
        try:
            folder = catalogue.resolve_model(str(Path(model).expanduser()) if model else None)
        except ACATInputError:
            if model:
                raise
            self._offered_models = frozenset()
            return [], ""  # nothing installed: the page says so
        offered = {Path(c.path).resolve(): str(c.path) for c in self.controller.modelChoices()}
        selected = offered.get(folder.resolve()) or str(self.controller.addModel(folder).path)  # verified first
        items = [{"title": c.title, "value": str(c.path)} for c in self.controller.modelChoices()]
        self._offered_models = frozenset(item["value"] for item in items)  # what the page may choose
        return items, selected

    def _init_state(self, model, input_path) -> None:
        items, selected = self._model_items(model)
        s = self.state
        s.trame__title = "ACAT viewer"
        s.update({
            "input_path": input_path or "", "input_info": "", "input_loaded": False, "busy": False,
            "models": items, "model": selected, "methods": list(METHODS), "method": "counterfactual",
            "windows": ["auto", *session.WINDOWS], "window": session.DEFAULT_WINDOW,
            "running": False, "progress": 0, "progress_text": "", "error": "", "status": "",
            "has_result": False, "result": {}, "overlays": [], "overlay": summary.SALIENCY,
            "rights": [], "right_view": "", "opacity": display.DEFAULT_OPACITY,
            "percentile": display.DEFAULT_PERCENTILE, "download_url": "",
            # DICOM results for PACS (acat explain --dicom): only for a CT read from a DICOM series
            "dicom_results": False, "deidentify": False, "dicom_reason": "open a CT first",
        })
        if not items:
            s.error = "No model found: start with --model FOLDER (a model bundle)."

    # -- opening a CT ------------------------------------------------------------------------------
    async def _open(self, path) -> None:
        with self.state:
            self.state.update({"busy": True, "error": "", "status": f"Reading {path} ...", "has_result": False,
                               "download_url": ""})
        self._drop_zip()
        try:
            volume = await asyncio.to_thread(self._read_allowed, path)
        except Exception as exc:  # noqa: BLE001 - shown in the panel as one line
            with self.state:
                self.state.update({"busy": False, "status": "", "error": _one_line(exc)})
            return
        self.session.set_window(self.state.window)
        self.session.show_input(volume, name=Path(str(path)).name or "CT", source=path)
        await self._show_layout(EXPLORE)
        dicom_reason = self.session.dicom_results_problem()
        with self.state:
            self.state.update({"busy": False, "input_loaded": True, "input_info": session.describe_volume(volume),
                               "status": "", "input_path": str(path), "dicom_reason": dicom_reason})
            if dicom_reason:
                self.state.update({"dicom_results": False, "deidentify": False})

    async def _show_layout(self, layout_id: str) -> None:
        """Switch layout and fit every view to the CT, now and again when the page has resized it (a view
        that changes size keeps its field of view and would show the CT shifted or cut)."""
        self._focus_ras = None
        self.layout_manager.set_layout(layout_id)
        self._needs_fit = {view.get_singleton_tag() for view in self.slicer_app.view_manager.get_slice_views()}
        await asyncio.sleep(SETTLE_S)
        self.slicer_app.display_manager.reset_views()

    def _observe_resizes(self) -> None:
        for view in self.slicer_app.view_manager.get_slice_views():
            # priority below trame-slicer's own observer, which resizes the slice node first
            view.interactor().AddObserver(vtkCommand.WindowResizeEvent, lambda *_, v=view: self._on_resized(v), -1.0)

    def _on_resized(self, view) -> None:
        tag = view.get_singleton_tag()
        if tag not in self._needs_fit:
            return  # the user's own zoom and pan are kept
        self._needs_fit.discard(tag)
        view.fit_view_to_content()
        if self._focus_ras is not None:
            view.get_view_node().JumpSliceByOffsetting(*self._focus_ras)

    def _read_allowed(self, path):
        """The CT at ``path`` if the page may open it (`files`); one line otherwise, the same whatever lies
        outside the allowed folders."""
        text = str(path).strip()
        return session.read_ct(self.allowed.check(text) if text else text)

    def open_input(self) -> None:
        create_task(self._open(self.state.input_path))

    async def _open_demo(self) -> None:
        with self.state:
            self.state.update({"busy": True, "error": "", "status": "Making the demo case (about 15 s) ..."})
        try:
            image = await asyncio.to_thread(demo_case.demo_case_image, self.private_dir / "demo")
        except Exception as exc:  # noqa: BLE001
            with self.state:
                self.state.update({"busy": False, "status": "", "error": _one_line(exc)})
            return
        await self._open(image)

    def open_demo(self) -> None:
        create_task(self._open_demo())

    # -- explain -----------------------------------------------------------------------------------
    def explain(self) -> None:
        model = self.state.model
        if not isinstance(model, str) or model not in self._offered_models:  # a page may send any value
            self.state.error = "choose a model from the list"
            return
        self._drop_zip()
        try:
            self.session.explain(model, ExplainOptions(method=self.state.method),
                                 dicom=bool(self.state.dicom_results),
                                 deidentify=bool(self.state.dicom_results and self.state.deidentify))
        except AlreadyRunning:
            return  # one explanation at a time: a second click (or a client's call) is ignored
        except (ValueError, TypeError, OSError, RuntimeError) as exc:
            self.state.error = _one_line(exc)
            return
        self.state.update({"running": True, "progress": 0, "progress_text": "Starting ...", "error": "",
                           "status": "", "has_result": False, "download_url": ""})
        self._task = create_task(self._watch())

    def cancel(self) -> None:
        self.controller.cancel()

    async def _watch(self) -> None:
        while True:
            outcome = self.controller.poll()  # also the outcome of a Cancel from the page
            event = self.controller.progress
            with self.state:
                if event is not None:
                    eta = f", about {event.etaS:.0f} s left" if event.etaS else ""
                    self.state.progress = round(100 * event.fraction, 1)
                    self.state.progress_text = f"{event.message or event.stage}{eta}"
            if outcome is not None:
                break
            await asyncio.sleep(POLL_INTERVAL_S)
        if outcome.state == SUCCEEDED:
            await self._show_results(outcome)
        with self.state:
            self.state.running = False
            if outcome.state == CANCELLED:
                self.state.status = "Cancelled; nothing was changed."
            elif outcome.state != SUCCEEDED:
                self.state.error = outcome.errorMessage

    async def _show_results(self, outcome) -> None:
        result = self.session.result
        choices = summary.view_choices(result)
        self.session.show_results()  # every view gets its volumes before it is fitted to them
        await self._show_layout(RESULTS if choices["rights"] else EXPLORE)
        self._focus_ras = self.session.focus_on_overlay()
        with self.state:
            self.state.update({
                "result": summary.result_summary(result, outcome.elapsedS, outcome.warnings),
                "overlays": choices["overlays"], "overlay": self.session.overlay,
                "rights": choices["rights"], "right_view": self.session.right,
                "has_result": True, "status": f"Explained in {outcome.elapsedS:.0f} s.",
            })

    # -- display and download ----------------------------------------------------------------------
    # State changes come from the page, so from whatever a client sends: a bad value is an error line
    # in the panel, never an exception in the server.
    def _on_window(self, window, **_) -> None:
        try:
            self.session.set_window(window)
        except (ValueError, TypeError) as exc:
            self.state.error = _one_line(exc)

    def _on_display(self, overlay, right_view, opacity, percentile, **_) -> None:
        if self.session.result is None or not self.state.has_result:
            return
        try:
            self.session.show_results(overlay=overlay, right=right_view, opacity=opacity, percentile=percentile)
        except (ValueError, TypeError) as exc:
            self.state.error = _one_line(exc)

    async def prepare_download(self) -> str:
        """Zip the shown result into the private downloads folder; returns its URL ("" on failure)."""
        with self.state:
            self.state.update({"busy": True, "status": "Preparing the download ..."})
        try:
            name = f"acat-results-{secrets.token_hex(4)}.zip"
            self._drop_zip()
            self._zip = await asyncio.to_thread(self.session.export_zip, self.downloads_dir, name)
            url = f"{self.download_route}/{name}"
            dicom = self.session.result is not None and (Path(self.session.result.outDir) / "dicom").is_dir()
            status, error = ("Results zipped: NRRD volumes, report.json" + (" and DICOM results (dicom/)."
                                                                             if dicom else "."), "")
        except (ValueError, OSError) as exc:
            url, status, error = "", "", _one_line(exc)
        with self.state:
            self.state.update({"busy": False, "status": status, "error": error, "download_url": url})
        return url

    def _drop_zip(self) -> None:
        """Delete the last results zip: a new one, a new run or a new CT supersedes it."""
        if self._zip is not None:
            self._zip.unlink(missing_ok=True)
            self._zip = None

    def close(self) -> None:
        """Stop a running explanation and delete the private folder (inputs written, results, downloads)."""
        try:
            self.controller.cancel()
        finally:
            shutil.rmtree(self.private_dir, ignore_errors=True)

    def stop_on_sigterm(self) -> None:
        """SIGTERM (``kill``, a service manager) cleans up as Ctrl+C does and exits at once with 143, even
        while a page is connected or a run goes on (installed once the server runs: it replaces aiohttp's)."""

        def on_sigterm(signum, _frame):
            try:
                self.close()
            finally:
                sys.stdout.flush()
                os._exit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)

    # -- page --------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.server.trigger("acat_download")(self.prepare_download)
        with SinglePageWithDrawerLayout(self.server, full_height=True) as ui:
            self.ui = ui
            ui.title.set_text("ACAT viewer")
            with ui.toolbar:
                v3.VSpacer()
                html.Span("Research use only - not for diagnosis", classes="text-caption mr-4")
            with ui.drawer as drawer:
                drawer.width = 380
                self._build_panel()
            with ui.content:
                with html.Div(style="height: 100%; display: flex;"):
                    self.layout_manager.initialize_layout_grid(ui)

    def _build_panel(self) -> None:
        with html.Div(classes="pa-3 d-flex flex-column ga-2", id="acat-panel"):
            v3.VTextField(v_model=("input_path",), label="CT: DICOM folder, NRRD or NIfTI (path on this computer)",
                          density="compact", hide_details=True, id="input-path")
            with html.Div(classes="d-flex ga-2"):
                v3.VBtn("Open", click=self.open_input, disabled=("busy || running",), id="open-button", size="small")
                v3.VBtn("Demo case", click=self.open_demo, disabled=("busy || running",), id="demo-button",
                        size="small")
            html.Div("{{ input_info }}", classes="text-caption", id="input-info")
            v3.VSelect(v_model=("window",), items=("windows",), label="CT window", density="compact",
                       hide_details=True)
            v3.VSelect(v_model=("model",), items=("models",), label="Model", density="compact", hide_details=True)
            v3.VSelect(v_model=("method",), items=("methods",), label="Method", density="compact", hide_details=True)
            v3.VCheckbox(v_model=("dicom_results",), label="DICOM results (for PACS)", density="compact",
                         hide_details=True, id="dicom-results", disabled=("busy || running || !!dicom_reason",))
            html.Div("{{ dicom_reason }}", v_show=("dicom_reason && input_loaded",), classes="text-caption",
                     id="dicom-reason")
            v3.VCheckbox(v_model=("deidentify",), label="De-identify them (no patient name, ID, birth date)",
                         v_show=("dicom_results",), density="compact", hide_details=True, id="deidentify",
                         disabled=("busy || running",))
            with html.Div(classes="d-flex ga-2"):
                v3.VBtn("Explain", click=self.explain, color="primary", id="explain-button",
                        disabled=("busy || running || !input_loaded || !model",))
                v3.VBtn("Cancel", click=self.cancel, v_show=("running",), id="cancel-button")
            v3.VProgressLinear(model_value=("progress",), v_show=("running",), height=8, color="primary")
            html.Div("{{ progress_text }}", v_show=("running",), classes="text-caption", id="progress-text")
            html.Div("{{ status }}", v_show=("status",), classes="text-caption", id="status")
            v3.VAlert(text=("error",), v_show=("error",), type="error", density="compact", id="error")
            with v3.VCard(v_if=("has_result",), variant="outlined", id="result-card"):
                v3.VCardTitle("Prediction: {{ result.prediction }}", id="prediction")
                with v3.VCardText():
                    with html.Table(classes="text-body-2", id="probabilities"):
                        with html.Tr(v_for="row in result.probabilities", key="row.label"):
                            html.Td("{{ row.label }}", classes="pr-4")
                            html.Td("{{ row.text }}", style=("row.predicted ? 'font-weight: bold' : ''",))
                    html.Div("{{ result.model }} - {{ result.method }} - {{ result.elapsed }}", classes="text-caption")
                    html.Div(v_html=("result.plot_svg",), classes="my-2", id="probability-plot")
                    v3.VSelect(v_model=("overlay",), items=("overlays",), label="Overlay", density="compact",
                               hide_details=True)
                    v3.VSlider(v_model=("opacity",), min=0, max=1, step=0.05, label="Opacity", density="compact",
                               hide_details=True, thumb_label=True)
                    v3.VSlider(v_model=("percentile",), min=50, max=99.9, step=0.1, label="Percentile",
                               density="compact", hide_details=True, thumb_label=True)
                    v3.VSelect(v_model=("right_view",), items=("rights",), label="Beside the original",
                               v_show=("rights.length",), density="compact", hide_details=True)
                    v3.VBtn("Download results", classes="mt-2", id="download-button", disabled=("busy",),
                            click=DOWNLOAD_JS)
                    html.A("acat-results.zip", href=("download_url",), v_show=("download_url",), download=True,
                           classes="ml-2 text-caption", id="download-link")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
