"""The one exception type for bad input.

Anything the user can fix (a wrong folder, a damaged file, a non-CT series) raises `ACATInputError`
with a one-line message that names the file and the problem. The CLI prints it as one line on stderr
and exits with `EXIT_BAD_INPUT`; any other exception is an internal error (`EXIT_INTERNAL`).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


def shown_path(path: object) -> str:
    """A path as text for a message: bytes that are not UTF-8 (Linux allows any) as ``\xff`` escapes."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the name's own bytes, escaped
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


class ACATInputError(ValueError):
    """Bad input that a user can act on. The message is one line, without a traceback."""

    def __init__(self, message: str, path: object | None = None):
        message = " ".join(str(message).split())  # one line, always
        if path is not None:
            message = f"{shown_path(path)}: {message}"
        super().__init__(message)
        self.path = path


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """A library exception as one short line (for "cannot read ... (reason)" messages)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Cancelled(RuntimeError):
    """The user cancelled a long operation; nothing was written."""
