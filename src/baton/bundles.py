"""The bundle format: a flow's directory as one content-addressed archive (issue 11, §3).

A bundle is a gzip-compressed tar of regular files only, in a canonical form: entries sorted by path, no
directories, mtime 0, uid/gid 0, no owner names, mode 0644 (0755 when executable), PAX format. Its **digest** is the
SHA-256 of the uncompressed tar, so the same files always give the same digest, whatever compressor a machine has:
re-registering unchanged code names the same bundle, and so makes no new flow version.

This module is shared by the three places that touch bundles, each with a narrow use:

- registration builds one (:func:`build_bundle`, from ``baton.sdk.bundling``'s file list);
- the server checks an upload before storing it (:func:`read_bundle`: digest, size caps, safe member names);
- the engine checks what it downloads and unpacks it (:func:`read_bundle`, then :func:`extract`).

Usage::

    bundle = build_bundle([("flows/etl.py", Path("flows/etl.py")), ...])
    files = read_bundle(bundle.data, expected_digest=bundle.digest)   # BundleError if anything is off
    extract(files, Path("/tmp/run-123"))
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# Caps: a bundle is code and small data files, not a dataset. Bytes of its files, files, each path's length.
MAX_BUNDLE_BYTES = 20 * 1024 * 1024
MAX_BUNDLE_FILES = 10_000
MAX_PATH_LENGTH = 1024
MAX_PATH_DEPTH = 32  # folders a path may go down
MAX_NAME_BYTES = 255  # one file or folder name (the usual file system limit)
# A PAX header holds one member's long path (at most MAX_PATH_LENGTH characters, 4 bytes each): more is an attack.
MAX_EXTENDED_HEADER_BYTES = 4 * MAX_PATH_LENGTH + 64
# The compressed bundle: the server's default request body limit (BATON__SERVER__MAX_BODY_BYTES), so an upload
# within the cap is never refused by the body limit first.
MAX_COMPRESSED_BYTES = 10 * 1024 * 1024
DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_PART = re.compile(r"^[^\x00-\x1f\x7f/\\]+$")


class BundleError(ValueError):
    """A bundle that is malformed, too big, unsafe, or not the one its digest names; the message says which."""


class BundleTooBigError(BundleError):
    """Over :data:`MAX_BUNDLE_BYTES` or :data:`MAX_BUNDLE_FILES`."""


@dataclass(frozen=True)
class Bundle:
    """A built bundle: its digest, its compressed bytes, and what it holds."""

    digest: str
    data: bytes
    size: int  # uncompressed bytes of the files
    files: tuple[str, ...]


def check_path(name: str) -> str:
    """``name`` if it is a safe relative POSIX path inside a bundle; else BundleError.

    Plain string checks (cheap for 10,000 members): no absolute path, no empty, ``.`` or ``..`` part (so no two
    spellings of one path), no control character or backslash, at most :data:`MAX_PATH_DEPTH` parts of at most
    :data:`MAX_NAME_BYTES` bytes each.
    """
    if not name or len(name) > MAX_PATH_LENGTH:
        raise BundleError(f"bundle path {name[:80]!r} is empty or longer than {MAX_PATH_LENGTH} characters")
    parts = name.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise BundleError(f"bundle path {name[:80]!r}... is more than {MAX_PATH_DEPTH} folders deep")
    for part in parts:
        if part in ("", ".", "..") or not _PART.match(part):
            raise BundleError(f"bundle path {name[:200]!r} is not a plain relative path")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise BundleError(f"bundle path {name[:200]!r} has a name longer than {MAX_NAME_BYTES} bytes")
    return name


def build_bundle(files: Iterable[tuple[str, Path]]) -> Bundle:
    """The canonical bundle of ``files`` (pairs of a path inside the bundle and the file to read).

    Raises:
        BundleTooBigError: over a cap (the message gives the sizes).
        BundleError: a path that is not a plain relative one, or a path given twice.
        OSError: a file cannot be read.
    """
    chosen = sorted(files, key=lambda item: item[0])
    if len(chosen) > MAX_BUNDLE_FILES:
        raise BundleTooBigError(f"{len(chosen)} files, over the cap of {MAX_BUNDLE_FILES}")
    raw = io.BytesIO()
    total = 0
    names: list[str] = []
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, source in chosen:
            check_path(name)
            if names and names[-1] == name:
                raise BundleError(f"bundle path {name!r} given twice")
            content = _read_capped(source, MAX_BUNDLE_BYTES - total)
            total += len(content)
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o755 if source.stat().st_mode & 0o100 else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(content))
            names.append(name)
    tar_bytes = raw.getvalue()
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as out:
        out.write(tar_bytes)
    data = compressed.getvalue()
    if len(data) > MAX_COMPRESSED_BYTES:
        raise BundleTooBigError(f"{_mb(len(data))} compressed, over the cap of {_mb(MAX_COMPRESSED_BYTES)}")
    return Bundle(hashlib.sha256(tar_bytes).hexdigest(), data, total, tuple(names))


def _read_capped(source: Path, room: int) -> bytes:
    """The file's bytes, never more than ``room`` read (a huge or endless file fails at the cap, not the memory).

    Raises:
        BundleTooBigError: more than ``room`` bytes.
        OSError: it cannot be read (the message names it).
    """
    try:
        with source.open("rb") as handle:
            if source.stat().st_size > room:
                raise BundleTooBigError(f"over {_mb(MAX_BUNDLE_BYTES)} of files (the cap)")
            content = handle.read(room + 1)
    except OSError as exc:
        raise OSError(f"{source}: cannot read it: {exc.strerror or exc}") from None
    if len(content) > room:
        raise BundleTooBigError(f"over {_mb(MAX_BUNDLE_BYTES)} of files (the cap)")
    return content


def read_bundle(data: bytes, expected_digest: str) -> dict[str, tuple[bytes, int]]:
    """The files of the compressed bundle ``data`` (path -> (content, mode)), after checking it is the bundle
    ``expected_digest`` names, within the caps, and made only of regular files with safe paths.

    Decompression stops at the cap: a small upload that inflates without end (a gzip bomb) is refused early.

    Raises:
        BundleTooBigError: over a cap.
        BundleError: not gzip, not tar, not the digest named, or an unsafe member.
    """
    if not DIGEST_PATTERN.match(expected_digest):
        raise BundleError("a bundle digest is 64 lowercase hexadecimal characters (SHA-256)")
    if len(data) > MAX_COMPRESSED_BYTES:
        raise BundleTooBigError(
            f"the compressed bundle is {_mb(len(data))}, over the cap of {_mb(MAX_COMPRESSED_BYTES)}"
        )
    tar_bytes = _inflate(data)
    if hashlib.sha256(tar_bytes).hexdigest() != expected_digest:
        raise BundleError(f"the bundle's content does not match its digest {expected_digest}")
    _check_headers(tar_bytes)
    try:
        files = _members(tar_bytes)
    except (tarfile.TarError, ValueError, EOFError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"the bundle is not a valid tar archive: {exc}") from None
    folders = _all_folders(files)
    clash = next((name for name in files if name in folders), None)
    if clash is not None:  # ``a`` and ``a/b.py``: it could not be unpacked
        raise BundleError(f"bundle member {clash!r} is both a file and a folder")
    return files


def _members(tar_bytes: bytes) -> dict[str, tuple[bytes, int]]:
    files: dict[str, tuple[bytes, int]] = {}
    total = 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as archive:
        for member in archive:
            if not member.isreg():
                raise BundleError(f"bundle member {member.name[:200]!r} is not a regular file")
            name = check_path(member.name)
            if name in files:
                raise BundleError(f"bundle member {name!r} is there twice")
            if len(files) >= MAX_BUNDLE_FILES:
                raise BundleTooBigError(f"over {MAX_BUNDLE_FILES} files (the cap)")
            if member.size < 0:
                raise BundleError(f"bundle member {name!r} has a negative size")
            total += member.size
            if total > MAX_BUNDLE_BYTES:
                raise BundleTooBigError(f"over {_mb(MAX_BUNDLE_BYTES)} of files (the cap)")
            handle = archive.extractfile(member)
            content = handle.read() if handle is not None else b""
            files[name] = (content, 0o755 if member.mode & 0o100 else 0o644)
    return files


def _all_folders(files: dict[str, tuple[bytes, int]]) -> set[str]:
    folders: set[str] = set()
    for name in files:
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[: depth + 1]) for depth in range(len(parts)))
    return folders


def _check_headers(tar_bytes: bytes) -> None:
    """Walk the tar's 512-byte headers before :mod:`tarfile` parses any: only what :func:`build_bundle` makes may
    pass (regular files, each perhaps after a PAX header holding its long ``path``). Any other header type (GNU
    long names, sparse files, global headers...) or PAX record is refused, so no upload reaches the slow paths of
    ``tarfile``'s header parsing (quadratic on some inputs before Python 3.11.10), and no PAX ``size`` record can
    make the parser see the archive differently from this walk.
    """
    position, members = 0, 0
    while position + 512 <= len(tar_bytes):
        header = tar_bytes[position : position + 512]
        if header == bytes(512):
            return
        size = _octal(header[124:136])
        kind = header[156:157]
        if kind == b"x":
            if size > MAX_EXTENDED_HEADER_BYTES:
                raise BundleError(f"the bundle has a PAX header of {size} bytes (at most {MAX_EXTENDED_HEADER_BYTES})")
            _check_pax(tar_bytes[position + 512 : position + 512 + size])
        elif kind not in (b"0", b"\0"):
            raise BundleError(f"bundle member of tar type {kind!r} is not a regular file")
        members += 1
        if members > 2 * MAX_BUNDLE_FILES + 2:  # each file may come with one PAX header
            raise BundleTooBigError(f"over {MAX_BUNDLE_FILES} files (the cap)")
        position += 512 + (size + 511) // 512 * 512


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text or not text.isdigit() or any(c not in b"01234567" for c in text):
        raise BundleError("the bundle is not a valid tar archive: a header's size is not an octal number")
    return int(text, 8)


def _check_pax(body: bytes) -> None:
    """A PAX header's records (``<length> <key>=<value>\\n``) must each be a ``path`` (or its ``hdrcharset``)."""
    position = 0
    while position < len(body):
        space = body.find(b" ", position, position + 8)
        if space < 0 or not body[position:space].isdigit():
            raise BundleError("the bundle has a malformed PAX header")
        end = position + int(body[position:space])
        record = body[space + 1 : end]
        if end > len(body) or end <= space + 1 or not record.endswith(b"\n") or b"=" not in record:
            raise BundleError("the bundle has a malformed PAX header")
        key = record.split(b"=", 1)[0]
        if key not in (b"path", b"hdrcharset"):
            raise BundleError(f"the bundle has a PAX record {key[:40]!r}: only 'path' is allowed")
        position = end


def extract(files: dict[str, tuple[bytes, int]], root: Path) -> None:
    """Write the files :func:`read_bundle` returned under ``root`` (an empty directory of the caller's)."""
    for name, (content, mode) in files.items():
        target = root.joinpath(*PurePosixPath(check_path(name)).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)


def _inflate(data: bytes) -> bytes:
    try:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
        out = inflater.decompress(data, MAX_BUNDLE_BYTES * 2 + 1)
        if len(out) > MAX_BUNDLE_BYTES * 2 or inflater.unconsumed_tail:
            raise BundleTooBigError(f"the bundle holds over {_mb(MAX_BUNDLE_BYTES)} of files (the cap)")
        if not inflater.eof or inflater.unused_data:
            raise BundleError("the bundle is not one complete gzip stream")
    except zlib.error as exc:
        raise BundleError(f"the bundle is not gzip data: {exc}") from None
    return out


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
