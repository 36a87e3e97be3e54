"""Run a flow file's code as a fresh module, turning every way it can fail into one clear FlowLoadError line.

Used by registration (``load_flows``) and by the engine (stored source or a local path). The module is never
named ``__main__``, so an ``if __name__ == "__main__":`` block in a flow file does not run.
"""

from __future__ import annotations

import linecache
import re
import sys
import traceback
import types
from pathlib import Path
from typing import Any

from baton.exceptions import FlowLoadError, InvalidScheduleError


def module_name_for(filename: str) -> str:
    """A module name for a flow file: ``baton_flow_<stem>`` (never ``__main__``, never a stdlib name)."""
    stem = re.sub(r"\W", "_", Path(filename).stem) or "flow"
    return f"baton_flow_{stem}"


def load_module_from_path(path: Path) -> types.ModuleType:
    """Import the file at ``path`` as a fresh module; its folder joins ``sys.path`` for its sibling imports.

    Raises:
        FlowLoadError: the file is missing, unreadable, has a syntax error or raises while it is imported.
    """
    path = path.expanduser().resolve()
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowLoadError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowLoadError(f"{path}: cannot read it: {exc}") from None
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return load_module_from_source(source, str(path), module_name_for(path.name))


def load_module_from_source(source: str, filename: str, module_name: str) -> types.ModuleType:
    """Execute ``source`` as the module ``module_name``, with ``filename`` in its tracebacks.

    The source lines are put in ``linecache``, so tracebacks show them even when ``filename`` does not exist
    on this host (a flow kept by the API and run on another machine).

    Raises:
        FlowLoadError: a syntax error, or the code raised while it ran.
    """
    lines = source.splitlines(keepends=True)
    # mtime None: linecache.checkcache keeps the entry instead of re-reading (or dropping) the file.
    linecache.cache[filename] = (len(source), None, lines, filename)
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        location = f"{exc.filename or filename}, line {exc.lineno}" if exc.lineno else filename
        raise FlowLoadError(f"{location}: SyntaxError: {exc.msg}") from None
    module = types.ModuleType(module_name)
    module.__file__ = filename
    # Registered before running, as an import would: dataclasses and pickling look their module up here.
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - running the flow file is the point
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        # An invalid schedule is bad input (exit 2), not a broken file: the kind survives the wrapping.
        kind = InvalidScheduleError if isinstance(exc, InvalidScheduleError) else FlowLoadError
        raise kind(_describe_import_error(exc, filename)) from exc
    return module


def _describe_import_error(exc: BaseException, filename: str) -> str:
    """``<file>, line <n>: <Type>: <message>`` at the deepest line of the flow file in the traceback."""
    line: int | None = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    text = str(exc)
    error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    where = f"{filename}, line {line}" if line else filename
    return f"{where}: {error}"


def module_objects(module: types.ModuleType, kind: type[Any]) -> list[Any]:
    """The objects of type ``kind`` bound to top-level names of the module, in definition order, once each."""
    found: dict[int, Any] = {}
    for value in vars(module).values():
        if isinstance(value, kind):
            found.setdefault(id(value), value)
    return list(found.values())
