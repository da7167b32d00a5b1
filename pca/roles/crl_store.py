"""The CRL object store ``[crl.store]`` names, opened the same way by the publisher, the CRL server and the
publisher's child process (``pca.roles.crl_worker``)."""

from __future__ import annotations

from pca.config import Config
from publishers.objectstore import DirectoryStore, ObjectStore
from publishers.s3store import S3Store


def open_store(config: Config) -> ObjectStore:
    """The object store ``[crl.store]`` names: the directory ``paths.crl_dir`` (default) or an S3 bucket."""
    cfg = config.crl.store
    if cfg.type == "directory":
        return DirectoryStore(config.crl_dir)
    return S3Store(
        cfg.bucket,
        prefix=cfg.prefix,
        endpoint_url=cfg.endpoint_url or None,
        region=cfg.region or None,
        addressing_style=cfg.addressing_style,
        profile=cfg.profile or None,
    )
