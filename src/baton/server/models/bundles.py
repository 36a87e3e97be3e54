"""Bundles: flows' folders, stored per tenant under their digest (``baton.bundles`` defines the format).

An upload is checked before anything is stored (:func:`verify`: gzip, digest, caps, safe member names), outside any
transaction, since inflating 20 MB takes a while and a SQLite transaction holds the write lock. The check records a
manifest (each file's SHA-256), so that registration compares a flow's source without inflating anything. Storing is
idempotent: a bundle is immutable, so a second upload of one digest changes nothing, also when two race.

Usage::

    checked = verify(data, digest)                          # BundleError / BundleTooBigError
    with transaction(factory) as session:
        info, created = store(session, tenant_id, checked)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.bundles import read_bundle
from baton.server.database.orm import Bundle
from baton.server.models.errors import ObjectNotFound, StaleState


@dataclass(frozen=True)
class VerifiedBundle:
    """An upload that :func:`verify` found to be the bundle its digest names."""

    digest: str
    data: bytes  # the compressed bytes, as uploaded
    size: int  # uncompressed bytes of the files
    file_count: int
    manifest: dict[str, str]  # path -> sha256 hex of the file


@dataclass(frozen=True)
class BundleInfo:
    """What is stored of a bundle, its bytes aside."""

    digest: str
    size: int
    compressed_size: int
    file_count: int
    created: datetime


def verify(data: bytes, digest: str) -> VerifiedBundle:
    """Check that ``data`` is the compressed bundle ``digest`` names (no database needed).

    Raises:
        BundleTooBigError: over a cap of ``baton.bundles`` (compressed, uncompressed, files).
        BundleError: not gzip, not tar, not that digest, or a member that is not a regular file with a safe path.
    """
    files = read_bundle(data, expected_digest=digest)
    manifest = {name: hashlib.sha256(content).hexdigest() for name, (content, _mode) in files.items()}
    return VerifiedBundle(digest, data, sum(len(content) for content, _mode in files.values()), len(files), manifest)


def store(session: Session, tenant_id: str, bundle: VerifiedBundle) -> tuple[BundleInfo, bool]:
    """Store ``bundle`` for the tenant unless it has it already. Returns (what is stored, created).

    A bundle already there is neither rewritten nor compared: the same digest is the same content.

    Raises:
        StaleState: the row could be neither inserted nor found (the tenant went away meanwhile; 409).
    """
    existing = find(session, tenant_id, bundle.digest)
    if existing is not None:
        return existing, False
    row = Bundle(
        tenant_id=tenant_id,
        digest=bundle.digest,
        size=bundle.size,
        compressed_size=len(bundle.data),
        file_count=bundle.file_count,
        manifest=bundle.manifest,
        data=bundle.data,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # Another upload of the same bundle committed first (PostgreSQL; SQLite's writers take turns): it stored
        # these very bytes.
        raced = find(session, tenant_id, bundle.digest)
        if raced is None:
            raise StaleState(f"bundle {bundle.digest} could not be stored; retry") from None
        return raced, False
    return _info(row), True


def find(session: Session, tenant_id: str, digest: str) -> BundleInfo | None:
    """The tenant's bundle ``digest`` without its bytes, or None."""
    row = session.execute(
        select(Bundle.digest, Bundle.size, Bundle.compressed_size, Bundle.file_count, Bundle.created).where(
            Bundle.tenant_id == tenant_id, Bundle.digest == digest
        )
    ).first()
    return None if row is None else BundleInfo(*row)


def exists(session: Session, tenant_id: str, digest: str) -> bool:
    """Whether the tenant has bundle ``digest``."""
    found = session.scalar(select(Bundle.digest).where(Bundle.tenant_id == tenant_id, Bundle.digest == digest))
    return found is not None


def get_info(session: Session, tenant_id: str, digest: str) -> BundleInfo:
    """The tenant's bundle ``digest`` without its bytes.

    Raises:
        ObjectNotFound: the tenant has no such bundle (other tenants' bundles included).
    """
    info = find(session, tenant_id, digest)
    if info is None:
        raise ObjectNotFound(f"bundle {digest} not found")
    return info


def get(session: Session, tenant_id: str, digest: str) -> bytes:
    """The compressed bytes of the tenant's bundle ``digest``, as uploaded.

    Raises:
        ObjectNotFound: the tenant has no such bundle (other tenants' bundles included).
    """
    data = session.scalar(select(Bundle.data).where(Bundle.tenant_id == tenant_id, Bundle.digest == digest))
    if data is None:
        raise ObjectNotFound(f"bundle {digest} not found")
    return bytes(data)


def file_digest(session: Session, tenant_id: str, digest: str, path: str) -> str | None:
    """The SHA-256 (hex) of the file at ``path`` in the tenant's bundle ``digest``; None when it has no such file.

    Raises:
        ObjectNotFound: the tenant has no such bundle.
    """
    manifest = session.scalar(select(Bundle.manifest).where(Bundle.tenant_id == tenant_id, Bundle.digest == digest))
    if manifest is None:
        raise ObjectNotFound(f"bundle {digest} not found")
    found = manifest.get(path)
    return found if isinstance(found, str) else None


def _info(row: Bundle) -> BundleInfo:
    return BundleInfo(row.digest, row.size, row.compressed_size, row.file_count, row.created)
