"""``acat view [INPUT] [--port N] [--host H] [--model M] [--allow-dir DIR ...]``: start the web viewer and
print its URL.

Listens on 127.0.0.1 unless ``--host`` says otherwise. Each launch makes a random token and prints it in
the URL; every request must carry it (`guard`), as must the page's websocket (it is the wslink secret,
handed to trame in a private file, never trame's public default). Requests from another web site's page
(a foreign ``Origin``, or a ``Host`` that is not this computer's) are refused whatever ``--host`` is.
The page opens files only inside INPUT's folder and the ``--allow-dir`` folders (`files`); what a page may
send and the process's memory are bounded (`limits`).
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
from typing import Optional

log = logging.getLogger("acat")

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def view_url(host: str, port: int, token: str) -> str:
    """The address to open: the page with this launch's token (``secret``, where trame's page reads it)."""
    import socket

    from .guard import TOKEN_FIELD

    shown = host if host not in ("0.0.0.0", "::", "") else socket.gethostname()
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/index.html?{TOKEN_FIELD}={token}"


def allowed_dirs(input_path: Optional[str], extra) -> list[Path]:
    """The folders the page may open files in: INPUT's (itself, or a file's folder) and each --allow-dir."""
    from ACATLogic.errors import ACATInputError

    folders = []
    if input_path:
        path = Path(input_path).expanduser().resolve()  # a link's target's folder, not the link's
        folders.append(path if path.is_dir() else path.parent)
    for text in extra or ():
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise ACATInputError("--allow-dir needs an existing folder", folder)
        folders.append(folder)
    return folders


def run(args: argparse.Namespace) -> int:
    """The ``acat view`` handler (called by ``ACATCli``)."""
    from ACATLogic.errors import ACATInputError

    host = args.host or LOOPBACK
    if not 0 < args.port < 65536:
        raise ACATInputError(f"--port must be between 1 and 65535, not {args.port}")
    if args.input and not Path(args.input).expanduser().exists():
        raise ACATInputError("no such file or folder", Path(args.input))
    input_path = str(Path(args.input).expanduser()) if args.input else None
    folders = allowed_dirs(input_path, getattr(args, "allow_dir", None))
    if not os.environ.get("DISPLAY"):
        # no X server: VTK's default X window only warns and falls back; ask for EGL (Mesa llvmpipe) directly
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    try:
        from . import guard, limits
        from .app import ViewerApp
    except ImportError as exc:
        raise ACATInputError(f"the web viewer's packages are missing ({exc}); install them with "
                             "pip install -e '.[slicer]' (or 'make venv')") from None

    if not getattr(args, "verbose", False):
        from vtkmodules.vtkCommonCore import vtkObject

        vtkObject.GlobalWarningDisplayOff()  # trame-slicer's views warn about VTK 9.7 deprecations
    from ACATLogic.io.limits import memory_budget_bytes

    # the viewer's memory budget; the explanation's child process gets its own limits back
    popen = limits.unlimited_popen(limits.set_memory_budget(limits.process_budget_bytes(memory_budget_bytes())))
    app = ViewerApp(model=args.model, input_path=input_path, allowed_dirs=folders, popen=popen)
    token = guard.new_token()
    token_file = app.private_dir / "token"  # trame reads its wslink secret from a file only this user can read
    token_file.write_text(token)
    url = view_url(host, args.port, token)
    if not is_loopback(host):
        log.warning("listening on %s: whoever has the address with its secret can use the viewer and open "
                    "files in %s; share it only with people who may", host,
                    ", ".join(str(f) for f in folders) or "no folder but the demo case")

    def announce(**_):
        app.stop_on_sigterm()
        print(f"ACAT viewer: {url}  (Ctrl+C stops it)", flush=True)

    app.ctrl.on_server_ready.add(announce)

    def bind(wslink_server):
        # only this launch's page may use it: the token, this computer's Host, its own Origin (guard.py);
        # and what that page may send is bounded (limits.py)
        guard.install(wslink_server, host, args.port, is_loopback(host), token)
        limits.install(wslink_server)

    app.ctrl.on_server_bind.add(bind)
    # trame would parse acat's own options as its own; it reads the wslink secret from the token file
    argv, sys.argv = sys.argv, [sys.argv[0], "--authKeyFile", str(token_file)]
    try:
        app.server.start(port=args.port, host=host, open_browser=False, show_connection_info=False, timeout=0,
                         disable_logging=True)
    finally:
        sys.argv = argv
        app.close()
    return 0
