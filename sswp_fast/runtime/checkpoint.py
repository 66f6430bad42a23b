"""Crash-safe checkpoint and small-file IO.

Writes go to a temporary file in the target's directory, are flushed and fsynced, and then atomically renamed
over the target (and the directory is fsynced), so a crash leaves either the old file or the new one, never a
partial one. Reads use ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects, so a
tampered checkpoint cannot run code; anything unreadable becomes a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Callable
from typing import IO, Any

import torch

from sswp_fast.errors import CheckpointError

_RESUME_HINT = "delete it or point --resume at a good one"


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Run ``write`` on a fresh temp file next to ``path`` and atomically move the result onto ``path``."""
    target = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(target)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 minus the umask, like a plain open(); O_EXCL so two writers never share a temp file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise CheckpointError(f"cannot write {target} ({_one_line(exc)}); "
                                  "check the directory exists and is writable") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write {target} ({_one_line(exc)}); "
                                  "check free disk space and permissions") from exc
        raise
    _fsync_dir(directory)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically: readers see the old file or the complete new one."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a small UTF-8 text (or JSON) file atomically."""
    data = text.encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` atomically (note the argument order: data first, like ``atomic_save``)."""
    _atomic_write(path, lambda f: f.write(data))


def _one_line(exc: BaseException) -> str:
    """A short one-line description of a load failure (torch wraps refusals in paragraphs of boilerplate)."""
    text = str(exc)
    if text.startswith("Weights only load failed"):
        details = []
        for paragraph in text.split("\n\n"):
            paragraph = paragraph.split("WeightsUnpickler error:", 1)[-1].strip()
            if paragraph and not paragraph.startswith(("Weights only load failed", "Check the documentation")):
                details.append(paragraph)
        text = "refused by the weights-only loader: " + (details[0] if details else "unsupported content")
    first = " ".join(text.split()).split(". ", 1)[0]  # the first sentence says what went wrong
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu",
                    fix: str | None = None) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)``; failures raise CheckpointError, whose
    message ends with ``fix`` (by default, advice about ``--resume``)."""
    name = os.fspath(path)
    if not os.path.exists(name):
        fix = fix or "check the path or point --resume at an existing one"
        raise CheckpointError(f"checkpoint {name} not found; {fix}")
    if os.path.isdir(name):
        fix = fix or "point --resume at a .pth.tar file inside it"
        raise CheckpointError(f"checkpoint {name} is a directory; {fix}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise next to the error below
            warnings.simplefilter("ignore")
            obj = torch.load(name, map_location=map_location, weights_only=True)
    except Exception as exc:  # every way a bad file can fail to load maps to the same message
        raise CheckpointError(f"checkpoint {name} is corrupt or not a torch checkpoint ({_one_line(exc)}); "
                              f"{fix or _RESUME_HINT}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {name} is corrupt or not a torch checkpoint (it holds a "
                              f"{type(obj).__name__}, not a dict); {fix or _RESUME_HINT}")
    return obj
