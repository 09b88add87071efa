"""Content-addressed cache of compiled artifacts.

The key hashes everything that decides the result: the source model's bytes, the
input shapes, the device profile's content, the pipeline, and the versions of
edgekit and the backends. A hit copies the cached artifact (and its archive) into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import onnx

from edgekit.compiler.artifact import install_dir, make_archive
from edgekit.deps import package_version
from edgekit.digests import file_sha256
from edgekit.errors import ArtifactError
from edgekit.manifest import Manifest, read_manifest
from edgekit.resources import cache_dir

__all__ = ["ArtifactCache", "cache_key", "source_fingerprint"]

log = logging.getLogger(__name__)


def source_fingerprint(path: Path) -> str:
    """SHA-256 of a model file and of any ONNX external-data files it points to."""
    h = hashlib.sha256(file_sha256(path).encode())
    if path.suffix.lower() == ".onnx":
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:
            return h.hexdigest()  # the frontend reports the real problem
        locations = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
        for loc in locations:
            data = path.parent / loc
            h.update(loc.encode())
            h.update(file_sha256(data).encode() if data.is_file() else b"missing")
    return h.hexdigest()


# Bump when what an artifact holds changes without an edgekit release (2: selftest.npz; 3: the host twin).
CACHE_FORMAT = 3


def cache_key(**parts: Any) -> str:
    parts["format"] = CACHE_FORMAT
    parts["versions"] = {
        "edgekit": package_version("edgekit"),
        "apache-tvm": package_version("apache-tvm"),
        "onnxruntime": package_version("onnxruntime"),
        "onnx": package_version("onnx"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ArtifactCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "artifacts"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def archive_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.tar.gz"

    def get(self, key: str) -> Path | None:
        path = self.path(key)
        return path if (path / "manifest.json").is_file() else None

    def get_archive(self, key: str) -> Path | None:
        """The cached ``.tar.gz`` of an entry, when one was stored (older entries have none: the caller rebuilds it)."""
        path = self.archive_path(key)
        return path if path.is_file() else None

    def put(self, key: str, artifact_dir: Path, archive: Path | None = None) -> bool:
        """Store an artifact (and its archive); the archive goes in first: an entry is complete once its folder exists.

        A cache that can't be written is not a failure: the artifact is already in place; this logs a warning and
        returns False.
        """
        final = self.path(key)
        if final.exists():
            return True
        tmp = final.with_name(f".{key}.{uuid.uuid4().hex[:8]}")
        tmp_archive = final.with_name(f".{key}.{uuid.uuid4().hex[:8]}.tar.gz")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if archive is not None:
                shutil.copyfile(archive, tmp_archive)
                tmp_archive.rename(self.archive_path(key))
            shutil.copytree(artifact_dir, tmp)
            tmp.rename(final)
            return True
        except OSError as exc:
            log.warning(
                "the compile cache %s can't be written (%s); the artifact is in place, but the next compile of this "
                "model starts from scratch (set EDGEKIT_CACHE_DIR, or pass --no-cache)",
                self.root,
                exc.strerror or exc,
            )
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        finally:
            with contextlib.suppress(OSError):
                tmp_archive.unlink(missing_ok=True)

    def install(self, key: str, out: Path) -> tuple[Path, Path, Manifest] | None:
        """Copy the entry ``key`` into ``out`` as ``<name>/`` and ``<name>.tar.gz``, each atomically: (dir, archive,
        manifest), or None when there is no readable entry."""
        cached = self.get(key)
        if cached is None:
            return None
        try:
            manifest = read_manifest(cached)
        except ArtifactError:
            return None
        final = out / manifest.name
        staged = out / f".{manifest.name}.cache-{key[:8]}"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(cached, staged)
        install_dir(staged, final)
        cached_archive = self.get_archive(key)
        if cached_archive is None:
            return final, make_archive(final), manifest
        archive = final.with_name(final.name + ".tar.gz")
        staged_archive = out / f".{archive.name}.cache-{key[:8]}"
        shutil.copyfile(cached_archive, staged_archive)
        os.replace(staged_archive, archive)
        return final, archive, manifest
