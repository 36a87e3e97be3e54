"""Which files travel with a flow (``baton.sdk.bundling``) and the bundle format (``baton.bundles``)."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import tempfile
from pathlib import Path

import pytest

from baton.bundles import MAX_BUNDLE_BYTES, BundleError, BundleTooBigError, build_bundle, extract, read_bundle
from baton.exceptions import FlowLoadError
from baton.sdk.bundling import bundle_directory, bundle_root, bundled_files, flow_path_in_bundle
from baton.sdk.registration import load_flows, prepare_registrations

FLOW = """
from baton import flow

@flow
def bundled() -> int:
    return 1
"""


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def names(root: Path) -> list[str]:
    return sorted(name for name, _ in bundled_files(root))


def test_the_root_is_the_flow_files_folder_or_the_folder_above_its_outermost_package(tmp_path: Path) -> None:
    tree(tmp_path, {"plain/flow.py": FLOW, "proj/pkg/__init__.py": "", "proj/pkg/sub/__init__.py": ""})
    tree(tmp_path, {"proj/pkg/sub/flow.py": FLOW})
    assert bundle_root(tmp_path / "plain" / "flow.py") == (tmp_path / "plain").resolve()
    root = bundle_root(tmp_path / "proj" / "pkg" / "sub" / "flow.py")
    assert root == (tmp_path / "proj").resolve()
    assert flow_path_in_bundle(tmp_path / "proj" / "pkg" / "sub" / "flow.py", root) == "pkg/sub/flow.py"


def test_a_flow_directly_in_the_home_temporary_or_a_system_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for flow_file in (
        tmp_path / "flow.py",
        Path("/etc/flow.py"),
        Path("/flow.py"),
        Path(tempfile.gettempdir()) / "f.py",
    ):
        with pytest.raises(BundleTooBigError, match="would ship that whole folder"):
            bundle_root(flow_file)
    assert bundle_root(Path("/app/flow.py")) == Path("/app")  # a project folder in an image is fine


def test_symlinks_travel_only_to_plain_files_inside_the_folder(tmp_path: Path) -> None:
    root = tree(tmp_path / "proj", {"flow.py": FLOW, "lib/real.py": "X = 1", ".env": "SECRET=1"})
    secret = tree(tmp_path / "elsewhere", {"id_rsa": "PRIVATE"}) / "id_rsa"
    (root / "alias.py").symlink_to(root / "lib" / "real.py")
    (root / "key").symlink_to(secret)
    (root / "dotenv").symlink_to(root / ".env")
    (root / "environ").symlink_to("/proc/self/environ")
    (root / "dangling").symlink_to(root / "nowhere")
    os.mkfifo(root / "pipe")
    assert names(root) == ["alias.py", "flow.py", "lib/real.py"]


def test_ignore_files_above_the_folder_count_up_to_the_top_of_the_work_tree(tmp_path: Path) -> None:
    repo = tree(tmp_path / "repo", {".gitignore": "*.pem\ncredentials.json\n", "flows/flow.py": FLOW})
    (repo / ".git").mkdir()
    tree(repo / "flows", {"server.pem": "KEY", "credentials.json": "{}", "helper.py": ""})
    assert names(repo / "flows") == ["flow.py", "helper.py"]
    # A repository of its own inside it: the outer one's rules stop there, as git's do
    (repo / ".gitignore").write_text("*\n")
    (repo / "flows" / ".git").mkdir()
    assert names(repo / "flows") == ["credentials.json", "flow.py", "helper.py", "server.pem"]


def test_a_huge_file_fails_at_the_cap_without_being_read(tmp_path: Path) -> None:
    root = tree(tmp_path / "proj", {"flow.py": FLOW})
    with (root / "sparse.bin").open("wb") as handle:
        handle.truncate(6 * 1024 * 1024 * 1024)  # 6 GB that take no disk, and would take memory if read
    with pytest.raises(BundleTooBigError, match=r"sparse\.bin 6144\.0 MB"):
        bundle_directory(root)


def test_hidden_files_caches_and_ignored_patterns_stay_behind(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "flow.py": FLOW,
            "helpers.py": "X = 1",
            ".env": "SECRET=1",
            ".git/config": "[core]",
            "__pycache__/helpers.cpython-311.pyc": "",
            "old.pyc": "",
            "venv/lib/site.py": "",
            "node_modules/x/index.js": "",
            ".gitignore": "*.log\nbuild/\n",
            "run.log": "log",
            "build/out.py": "",
            "data/a.csv": "1",
            "data/keep.csv": "2",
            "data/.gitignore": "*.csv\n",
            "data/.batonignore": "!keep.csv\n",  # read after the .gitignore beside it: brings one file back
            ".batonignore": "notes.txt\n",
            "notes.txt": "private",
            "pkg/__init__.py": "",
            "pkg/mod.py": "",
        },
    )
    assert names(tmp_path) == ["data/keep.csv", "flow.py", "helpers.py", "pkg/__init__.py", "pkg/mod.py"]


def test_the_same_files_anywhere_make_the_same_digest_and_any_change_another(tmp_path: Path) -> None:
    files = {"flow.py": FLOW, "lib/util.py": "def f():\n    return 2\n"}
    first = bundle_directory(tree(tmp_path / "a", files))
    second_root = tree(tmp_path / "b", files)
    os.utime(second_root / "flow.py", (1, 1))  # another checkout, other times
    assert bundle_directory(second_root).digest == first.digest
    (second_root / "lib" / "util.py").write_text("def f():\n    return 3\n")
    assert bundle_directory(second_root).digest != first.digest


def test_a_bundle_reads_back_and_unpacks_to_the_same_files(tmp_path: Path) -> None:
    root = tree(tmp_path / "src", {"flow.py": FLOW, "deep/er/x.txt": "x"})
    (root / "flow.py").chmod(0o755)
    bundle = bundle_directory(root)
    files = read_bundle(bundle.data, bundle.digest)
    assert sorted(files) == ["deep/er/x.txt", "flow.py"]
    out = tmp_path / "out"
    out.mkdir()
    extract(files, out)
    assert (out / "deep" / "er" / "x.txt").read_text() == "x"
    assert (out / "flow.py").stat().st_mode & 0o777 == 0o755


def test_too_big_names_the_biggest_files_and_folders(tmp_path: Path) -> None:
    root = tree(tmp_path, {"flow.py": FLOW})
    (root / "data").mkdir()
    (root / "data" / "huge.bin").write_bytes(b"\0" * (MAX_BUNDLE_BYTES + 1))
    with pytest.raises(BundleTooBigError) as caught:
        bundle_directory(root)
    message = str(caught.value)
    assert "data/huge.bin 20.0 MB" in message and "folders: data/" in message and ".batonignore" in message


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> tuple[bytes, str]:
    import hashlib

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return gzip.compress(raw.getvalue()), hashlib.sha256(raw.getvalue()).hexdigest()


@pytest.mark.parametrize(
    "name", ["../evil.py", "/etc/passwd", "a/../../b", "a\\b.py", "bad\x01name", ".", "./flow.py", "a//b", "a/./b"]
)
def test_a_bundle_with_an_unsafe_path_is_refused(name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 1
    data, digest = _tar([(info, b"x")])
    with pytest.raises(BundleError, match="not a plain relative path"):
        read_bundle(data, digest)


def test_a_bundle_with_a_link_or_device_is_refused() -> None:
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    data, digest = _tar([(link, b"")])
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(data, digest)


def test_a_bundle_that_is_not_what_its_digest_names_or_not_gzip_is_refused(tmp_path: Path) -> None:
    bundle = build_bundle([("flow.py", tree(tmp_path, {"flow.py": FLOW}) / "flow.py")])
    with pytest.raises(BundleError, match="does not match its digest"):
        read_bundle(bundle.data, "0" * 64)
    with pytest.raises(BundleError, match="not gzip"):
        read_bundle(b"plain text", bundle.digest)
    with pytest.raises(BundleError, match="64 lowercase"):
        read_bundle(bundle.data, "../x")
    with pytest.raises(BundleTooBigError):
        read_bundle(gzip.compress(b"\0" * (MAX_BUNDLE_BYTES * 2 + 10)), bundle.digest)


def test_registration_shares_one_bundle_per_folder_and_refuses_an_ignored_flow_file(tmp_path: Path) -> None:
    root = tree(tmp_path / "proj", {"one.py": FLOW, "two.py": FLOW.replace("bundled", "other"), "util.py": ""})
    found = [(path, flow) for path in (root / "one.py", root / "two.py") for flow in load_flows(path)]
    first, second = prepare_registrations(found)
    assert first.bundle is not None and first.bundle is second.bundle
    assert first.payload["storage"] == {
        "type": "api",
        "path": "one.py",
        "image": None,
        "repo": None,
        "ref": None,
        "bundle": first.bundle.digest,
    }
    assert sorted(first.bundle.files) == ["one.py", "two.py", "util.py"]

    (root / ".batonignore").write_text("two.py\n")
    with pytest.raises(FlowLoadError, match="the flow file itself is left out"):
        prepare_registrations(found)


def test_a_bundle_whose_member_is_both_a_file_and_a_folder_or_too_deep_is_refused() -> None:
    members = []
    for name in ("a", "a/b.py"):
        info = tarfile.TarInfo(name)
        info.size = 1
        members.append((info, b"x"))
    data, digest = _tar(members)
    with pytest.raises(BundleError, match="both a file and a folder"):
        read_bundle(data, digest)
    deep = tarfile.TarInfo("/".join(["d"] * 40) + "/x.py")
    deep.size = 1
    data, digest = _tar([(deep, b"x")])
    with pytest.raises(BundleError, match="folders deep"):
        read_bundle(data, digest)


def test_a_huge_extended_header_is_refused_before_it_is_parsed() -> None:
    import hashlib

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("x.py")
        info.size = 1
        info.pax_headers = {f"k{n}": "v" for n in range(5000)}
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleError, match="PAX header of"):
        read_bundle(gzip.compress(raw.getvalue(), mtime=0), hashlib.sha256(raw.getvalue()).hexdigest())


def _raw_member(kind: bytes, body: bytes) -> bytes:
    """A tar of one header of type ``kind`` with ``body``, then a regular file: written by hand, as an attacker."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.size = len(body)
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    header[156:157] = kind
    header[148:156] = b"        "
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    file = tarfile.TarInfo("x.py")
    file.size = 1
    pad = lambda b: b + b"\0" * (-len(b) % 512)  # noqa: E731
    return bytes(header) + pad(body) + file.tobuf(tarfile.USTAR_FORMAT) + pad(b"1") + b"\0" * 1024


@pytest.mark.parametrize(
    ("kind", "body", "why"),
    [
        (b"X", b"30 path=" + b"1" * 21 + b"\n", "tar type b'X'"),  # read as PAX by tarfile, outside the caps
        (b"g", b"12 path=abc\n", "tar type b'g'"),
        (b"L", b"long-name", "tar type b'L'"),
        (b"x", b"10 size=0\n", "only 'path' is allowed"),  # would desynchronise the walk and the parser
        (b"x", b"21 GNU.sparse.size=a\n", "only 'path' is allowed"),
        (b"x", b"99999 path=a\n", "malformed PAX header"),
        (b"x", b"1" * 500, "malformed PAX header"),
    ],
)
def test_only_the_headers_a_bundle_is_made_of_reach_the_tar_parser(kind: bytes, body: bytes, why: str) -> None:
    import hashlib

    tar = _raw_member(kind, body)
    with pytest.raises(BundleError, match=re.escape(why)):
        read_bundle(gzip.compress(tar, mtime=0), hashlib.sha256(tar).hexdigest())


def test_a_flow_file_with_crlf_line_ends_is_sent_as_its_bundle_holds_it(tmp_path: Path) -> None:
    root = tmp_path / "windows"
    root.mkdir()
    (root / "flow.py").write_bytes(FLOW.replace("\n", "\r\n").encode())
    [registration] = prepare_registrations([(root / "flow.py", flow) for flow in load_flows(root / "flow.py")])
    assert registration.bundle is not None
    files = read_bundle(registration.bundle.data, registration.bundle.digest)
    assert registration.payload["source"].encode() == files["flow.py"][0] and "\r\n" in registration.payload["source"]
