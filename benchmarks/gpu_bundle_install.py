"""Installing the GPU bundle: archives + ``manifest.json`` -> checked (bytes, sha256) and unpacked
under ``<dest>/triton``, ``<dest>/triton/stub-site`` and ``<dest>/site``.

Runs on the GPU machine before anything else exists there (``python -m covidct.benchmarks.gpu_bundle
--install BUNDLE --dest DEST``), so only the standard library is imported. Sizes are bytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

from covidct.errors import BenchmarkToolError

MANIFEST = "manifest.json"


def sha256_of(path: Path) -> str:
    """Hex sha256 digest of the file ``path`` (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install(bundle: Path, dest: Path) -> dict[str, str]:
    """Check every archive of ``bundle`` against its manifest (bytes, sha256) and unpack it
    under ``dest`` (``triton``, ``triton/stub-site``, ``site``); returns target -> folder."""
    manifest_path = bundle / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchmarkToolError(
            f"{manifest_path}: no readable bundle manifest ({exc}); run `make gpu-bundle`") from exc
    running = "%d.%d" % sys.version_info[:2]
    if manifest["python_version"] != running:
        raise BenchmarkToolError(f"{manifest_path}: bundle built for Python {manifest['python_version']}; "
                                 f"this interpreter ({sys.executable}) is Python {running}")
    folders = {"triton": dest / "triton", "stub-site": dest / "triton" / "stub-site", "site": dest / "site"}
    for entry in sorted(manifest["archives"], key=lambda a: len(str(folders[a["target"]]))):
        path = bundle / entry["file"]
        size = path.stat().st_size if path.is_file() else None
        if size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
            raise BenchmarkToolError(f"{path}: {size} bytes, sha256 differs from the manifest; expected "
                                     f"{entry['bytes']} bytes, sha256 {entry['sha256'][:16]}... (incomplete copy?)")
        folders[entry["target"]].mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "r:xz") as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(folders[entry["target"]], filter="data")
            else:  # Python without extraction filters: members are plain relative files (see write_archive)
                archive.extractall(folders[entry["target"]])
    return {target: str(folder) for target, folder in folders.items()}
