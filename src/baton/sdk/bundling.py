"""Which files travel with a flow: its directory (or the package it is in), less what is ignored, as one bundle.

- **The root.** The flow file's folder; when that folder is a package (it has ``__init__.py``), the folder above the
  outermost package, so ``import mypackage.helpers`` works on the agent as it did here. A flow file directly in the
  home folder, the temporary folder, ``/`` or a system folder (``/etc``, ``/tmp``, ``/usr``...) is refused: that
  would ship the whole of it (a project folder such as ``/app`` is fine).
- **What is left out.** Hidden files and folders (a leading ``.``: ``.git``, ``.env``, ``.venv``, ``.ssh``...),
  ``__pycache__``, compiled files (``*.pyc``, ``*.pyo``), ``venv``, ``node_modules``; then every pattern of each
  ``.gitignore`` and ``.batonignore`` (gitignore syntax, each applying to its folder and below; a ``.batonignore``
  is read after the ``.gitignore`` beside it, so its ``!pattern`` can bring a file back), the ones of the folders
  above up to the top of the Git work tree included. Symlinked folders are not followed; a symlinked file travels
  as its content only when it leads to a regular, not hidden file inside the root (never ``~/.ssh/...``,
  ``/proc/...`` or a ``.env``); special files (FIFOs, devices) never travel.
- **The caps** (``baton.bundles``): over them, the error names the biggest files and folders, so the fix (a line
  in ``.batonignore``) is obvious.

Usage::

    root = bundle_root(Path("flows/etl.py"))
    bundle = bundle_directory(root)          # BundleError / BundleTooBigError with a clear message
    relative = flow_path_in_bundle(Path("flows/etl.py"), root)
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pathspec

from baton.bundles import MAX_BUNDLE_BYTES, Bundle, BundleTooBigError, build_bundle

IGNORE_FILES = (".gitignore", ".batonignore")
_SYSTEM_FOLDERS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",  # noqa: S108 - a folder never to bundle, not one to write in
    "/usr",
    "/var",
    "/var/tmp",  # noqa: S108 - likewise
    "/usr/local",
    "/usr/lib",
)
_ALWAYS_LEFT_OUT_DIRS = frozenset({"__pycache__", "venv", "node_modules"})
_ALWAYS_LEFT_OUT_SUFFIXES = (".pyc", ".pyo")


def bundle_root(flow_file: Path) -> Path:
    """The folder whose files travel with the flow file ``flow_file`` (see the module docstring).

    Raises:
        BundleTooBigError: the root would be the home directory or ``/``.
    """
    folder = flow_file.expanduser().resolve().parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        folder = folder.parent
    # The home folder, the temporary folder, / and the system's own folders: never a project of their own (a
    # project folder directly under /, such as /app in an image, is one)
    shared = {Path.home().resolve(), Path(tempfile.gettempdir()).resolve(), *(Path(f) for f in _SYSTEM_FOLDERS)}
    if folder in shared or folder.parent == folder:
        raise BundleTooBigError(
            f"{flow_file} is directly in {folder}: registering it would ship that whole folder; "
            "move the flow into a project folder of its own"
        )
    return folder


def flow_path_in_bundle(flow_file: Path, root: Path) -> str:
    """``flow_file``'s path inside the bundle of ``root`` (POSIX)."""
    return flow_file.expanduser().resolve().relative_to(root).as_posix()


def bundle_directory(root: Path) -> Bundle:
    """The bundle of ``root``'s files (see the module docstring).

    Raises:
        BundleTooBigError: over a cap; the message lists the biggest files and folders.
        BundleError: a file name that cannot travel (e.g. a control character).
        OSError: a file cannot be read.
    """
    files = list(bundled_files(root))
    try:
        return build_bundle(files)
    except BundleTooBigError as exc:
        raise BundleTooBigError(
            f"{root}: {exc}; {_biggest(files)}; list what should not travel in .batonignore"
        ) from None


def bundled_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Each file that travels: (its POSIX path inside the bundle, the file), in no particular order.

    The ignore files of the folders above ``root`` up to the top of its Git work tree count too (a monorepo's
    ``.gitignore`` listing ``*.pem`` keeps them out of every flow folder below it).
    """
    specs = [(folder, spec) for folder in _folders_above(root) if (spec := _folder_spec(folder)) is not None]
    yield from _walk(root, root, specs)


def _folders_above(root: Path) -> list[Path]:
    """The folders from the top of ``root``'s Git work tree down to ``root``'s parent ([] outside a work tree, or
    when ``root`` is itself the top of one: a repository's ignore files stop at a nested repository, as git's do)."""
    if (root / ".git").exists():
        return []
    above: list[Path] = []
    for folder in root.parents:
        above.append(folder)
        if (folder / ".git").exists():
            return list(reversed(above))
    return []


def _walk(root: Path, folder: Path, specs: list[tuple[Path, pathspec.GitIgnoreSpec]]) -> Iterator[tuple[str, Path]]:
    spec = _folder_spec(folder)
    if spec is not None:
        specs = [*specs, (folder, spec)]
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return  # an unreadable folder: what is in it cannot travel (its files' absence shows at import)
    for entry in entries:
        path = Path(entry.path)
        is_dir = entry.is_dir(follow_symlinks=False)
        if _left_out(entry.name, is_dir) or _ignored(path, is_dir, specs):
            continue
        if is_dir:
            yield from _walk(root, path, specs)
        elif entry.is_file(follow_symlinks=False) or (entry.is_symlink() and _link_inside(path, root)):
            yield path.relative_to(root).as_posix(), path


def _link_inside(link: Path, root: Path) -> bool:
    """Whether a symlinked file may travel as its content: it leads to a regular file inside ``root`` that is not
    hidden. A link to ``~/.ssh/id_rsa``, ``/proc/self/environ`` or a ``.env`` beside it stays behind."""
    try:
        target = link.resolve(strict=True)
        if not stat.S_ISREG(target.stat().st_mode) or not target.is_relative_to(root):
            return False
    except (OSError, RuntimeError):  # dangling, a loop, unreadable
        return False
    return not any(part.startswith(".") for part in target.relative_to(root).parts)


def _left_out(name: str, is_dir: bool) -> bool:
    if name.startswith("."):
        return True
    return name in _ALWAYS_LEFT_OUT_DIRS if is_dir else name.endswith(_ALWAYS_LEFT_OUT_SUFFIXES)


def _folder_spec(folder: Path) -> pathspec.GitIgnoreSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        try:
            lines.extend((folder / name).read_text(encoding="utf-8", errors="replace").splitlines())
        except OSError:
            continue
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _ignored(path: Path, is_dir: bool, specs: list[tuple[Path, pathspec.GitIgnoreSpec]]) -> bool:
    """Whether the nearest ignore file that has a say about ``path`` excludes it (the deepest decides)."""
    ignored = False
    for base, spec in specs:
        relative = path.relative_to(base).as_posix() + ("/" if is_dir else "")
        result = spec.check_file(relative)
        if result.include is not None:
            ignored = bool(result.include)
    return ignored


def _biggest(files: list[tuple[str, Path]]) -> str:
    sizes: dict[str, int] = {}
    by_folder: dict[str, int] = {}
    for name, path in files:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        sizes[name] = size
        top = name.split("/", 1)[0] + ("/" if "/" in name else "")
        by_folder[top] = by_folder.get(top, 0) + size
    total = sum(sizes.values())
    top_files = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    top_folders = sorted(((k, v) for k, v in by_folder.items() if k.endswith("/")), key=lambda item: -item[1])[:3]
    parts = [f"{len(sizes)} files, {_mb(total)} (cap {_mb(MAX_BUNDLE_BYTES)})"]
    parts.append("biggest: " + ", ".join(f"{name} {_mb(size)}" for name, size in top_files))
    if top_folders:
        parts.append("folders: " + ", ".join(f"{name} {_mb(size)}" for name, size in top_folders))
    return "; ".join(parts)


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
