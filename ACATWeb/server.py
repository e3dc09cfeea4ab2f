"""``acat view [INPUT] [--port N] [--host H] [--model M]``: start the web viewer and print its URL.

Listens on 127.0.0.1 unless ``--host`` says otherwise: the viewer has no login, so anyone who can
reach the port can open scans on this computer by path and see the results. Requests from another web
site's page (a foreign ``Origin``, or a ``Host`` other than the loopback address) are refused (`guard`).
Offscreen rendering needs no display: VTK picks EGL (Mesa's llvmpipe on a machine without a GPU;
Debian packages ``libegl-mesa0`` and ``libgl1-mesa-dri``) when ``DISPLAY`` is not set.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("acat")

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def view_url(host: str, port: int) -> str:
    shown = host if host not in ("0.0.0.0", "::", "") else "HOSTNAME"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def run(args: argparse.Namespace) -> int:
    """The ``acat view`` handler (called by ``ACATCli``)."""
    from ACATLogic.errors import ACATInputError

    host = args.host or LOOPBACK
    if not 0 < args.port < 65536:
        raise ACATInputError(f"--port must be between 1 and 65535, not {args.port}")
    if args.input and not Path(args.input).expanduser().exists():
        raise ACATInputError("no such file or folder", Path(args.input))
    if not os.environ.get("DISPLAY"):
        # no X server: VTK's default X window only warns and falls back; ask for EGL (Mesa llvmpipe) directly
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    try:
        from . import guard
        from .app import ViewerApp
    except ImportError as exc:
        raise ACATInputError(f"the web viewer's packages are missing ({exc}); install them with "
                             "pip install -e '.[slicer]' (or 'make venv')") from None

    if not getattr(args, "verbose", False):
        from vtkmodules.vtkCommonCore import vtkObject

        vtkObject.GlobalWarningDisplayOff()  # trame-slicer's views warn about VTK 9.7 deprecations
    app = ViewerApp(model=args.model, input_path=str(Path(args.input).expanduser()) if args.input else None)
    url = view_url(host, args.port)
    if not is_loopback(host):
        log.warning("listening on %s: anyone who can reach this computer's port %d can use the viewer "
                    "(there is no login)", host, args.port)

    def announce(**_):
        print(f"ACAT viewer: {url}  (Ctrl+C stops it)", flush=True)

    app.ctrl.on_server_ready.add(announce)
    # only this viewer's own page may use it: not another site's page in the same browser (guard.py)
    app.ctrl.on_server_bind.add(lambda wslink_server: guard.install(wslink_server, host, args.port,
                                                                    is_loopback(host)))
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame would parse acat's own options as its own
    try:
        app.server.start(port=args.port, host=host, open_browser=False, show_connection_info=False, timeout=0,
                         disable_logging=True)
    finally:
        sys.argv = argv
        app.close()
    return 0
