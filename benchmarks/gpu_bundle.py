"""The GPU machine's bundle: what the GPU run needs that its interpreter lacks, stripped to fit.

The GPU machine has no network; its Python (torch with CUDA, numpy 2, scipy, onnx,
onnxruntime, grpcio, protobuf, ... : :data:`benchmarks.gpu_image.GPU_IMAGE_PACKAGES`) lacks the Triton server,
the Triton client and the DICOM/NIfTI readers the client imports. Everything that travels
there (working tree + bundle) must stay under :data:`TRANSFER_LIMIT_BYTES` (64 MiB), so
the wheels of :data:`PACKAGES` are downloaded for the target Python
(``pip download --no-deps --only-binary=:all: --platform ... --python-version ...``),
unpacked the way ``pip install --target`` lays them out, stripped, and packed into one
``.tar.xz`` per install target (the server's kept files: 25.2 MB as ``.tar.xz`` against
39.3 MB deflated inside the wheel):

- ``triton.tar.xz`` -> ``<dest>/triton`` (``$COVIDCT_TRITON_DIR``): ``nvidia-pytriton``
  without its Python package, with ``tritonserver``, the Python backend, the one
  Python-backend stub for the target Python and only the bundled libraries those ELF
  files need (``DT_NEEDED`` closure, read from the files: :func:`elf_needed`);
- ``stub-site.tar.xz`` -> ``<dest>/triton/stub-site``: numpy 1.26 for the stub (Triton
  2.51's stub answers empty tensors with numpy 2), without its test suites;
- ``site.tar.xz`` -> ``<dest>/site`` (put on ``PYTHONPATH``): the client side
  (tritonclient and python-rapidjson, pydicom and nibabel), without test suites, test
  data and binaries (``*.data/scripts``, ``*.data/data``: perf_analyzer and friends).

``manifest.json`` lists every archive (bytes, sha256, what it holds and what was dropped),
the total, the working tree that travels beside it (git's tracked and untracked,
not ignored files) and the headroom; the build fails when bundle + tree exceed the limit.

    python -m benchmarks.gpu_bundle --out gpu_bundle --python-version 3.12     # make gpu-bundle
    python -m benchmarks.gpu_bundle --install gpu_bundle --dest WORK/env        # on the GPU machine

Only the standard library is imported: the installer runs before anything else exists.
Sizes are bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
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

from benchmarks.gpu_image import normalize
from covidct.errors import BenchmarkToolError

MIB = 1 << 20
TRANSFER_LIMIT_BYTES = 64 * MIB
MANIFEST = "manifest.json"
REJECTED_MANIFEST = "manifest.over-limit.json"
PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)) + (
    "manylinux2014_x86_64", "manylinux1_x86_64")
"""Wheel platforms accepted for the GPU machine (x86_64, glibc >= 2.35 as the server needs)."""

SERVER_LIBS = "nvidia_pytriton.libs/"
SERVER_ELF_ROOTS = (
    "pytriton/tritonserver/bin/tritonserver",
    "pytriton/tritonserver/backends/python/libtriton_python.so",
    "pytriton/tritonserver/python_backend_stubs/{python}/triton_python_backend_stub",
)
"""The server's executables; the libraries kept are their ``DT_NEEDED`` closure."""


@dataclass(frozen=True)
class BundlePackage:
    """One wheel of the bundle.

    target: the archive (and install folder) it goes to: ``triton``, ``stub-site`` or ``site``.
    keep: glob patterns; when given, only matching files are kept (``{python}`` = ``3.12``).
    drop: ``(glob pattern, reason)`` pairs of files left out.
    elf_roots / libs_prefix: keep only the libraries under ``libs_prefix`` that the ELF
        files ``elf_roots`` need, directly or through each other.
    """

    requirement: str
    target: str
    reason: str
    keep: tuple[str, ...] = ()
    drop: tuple[tuple[str, str], ...] = ()
    elf_roots: tuple[str, ...] = ()
    libs_prefix: str = ""

    @property
    def name(self) -> str:
        return normalize(self.requirement.split("==")[0])

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1] if "==" in self.requirement else ""


TESTS = ("*/tests/*", "test suite")
PACKAGES = (
    BundlePackage(
        "nvidia-pytriton==0.7.0", "triton", "Triton 2.51: tritonserver, Python backend, stub",
        keep=("nvidia_pytriton-*.dist-info/*", SERVER_ELF_ROOTS[0], "pytriton/tritonserver/backends/python/*",
              "pytriton/tritonserver/python_backend_stubs/{python}/*", SERVER_LIBS + "*"),
        elf_roots=SERVER_ELF_ROOTS, libs_prefix=SERVER_LIBS,
    ),
    BundlePackage("numpy==1.26.4", "stub-site", "the stub's numpy (numpy 2 gives empty outputs)", drop=(TESTS,)),
    BundlePackage("tritonclient==2.73.0", "site", "gRPC client (client.submit, benchmarks)", drop=(TESTS,)),
    BundlePackage("python-rapidjson==1.25", "site", "imported by tritonclient"),
    BundlePackage("pydicom==3.0.2", "site", "imported by preprocessing.io (series reader)",
                  drop=(("pydicom/data/test_files/*", "test data"), TESTS)),
    BundlePackage("nibabel==5.4.2", "site", "imported by preprocessing.io (NIfTI reader)", drop=(TESTS,)),
)
"""What the GPU run imports that :data:`GPU_IMAGE_PACKAGES` lacks (the unit tests import the
run's modules with only those two sets visible), pinned to the versions tested here."""

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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# ------------------------------------------------------------------------ install
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
            else:  # Python without extraction filters: members are plain relative files (write_archive)
                archive.extractall(folders[entry["target"]])
    return {target: str(folder) for target, folder in folders.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = BundleConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=d.out, help="bundle folder to write (default %(default)s)")
    p.add_argument("--python-version", default=d.python_version, help="target CPython X.Y (default %(default)s)")
    p.add_argument("--wheels", default=None, help="use the wheels in this folder, download nothing")
    p.add_argument("--cache", default=d.cache, help="download folder, reused (default %(default)s)")
    p.add_argument("--limit-mib", type=float, default=d.limit_bytes / MIB, help="bundle + working tree limit")
    p.add_argument("--no-working-tree", action="store_true", help="do not count the working tree")
    p.add_argument("--preset", type=int, default=d.preset, help="xz preset 0-9 (default %(default)s)")
    p.add_argument("--install", default=None, metavar="BUNDLE", help="unpack this bundle (with --dest) instead")
    p.add_argument("--dest", default=None, help="with --install: the folder to unpack into")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        if a.install:
            if not a.dest:
                raise BenchmarkToolError("--install needs --dest (the folder to unpack into)")
            for target, folder in install(Path(a.install), Path(a.dest)).items():
                print(f"{target}: {folder}")
            return 0
        cfg = dataclasses.replace(
            BundleConfig(), out=a.out, python_version=a.python_version, wheels=a.wheels, cache=a.cache,
            limit_bytes=int(a.limit_mib * MIB), working_tree=None if a.no_working_tree else ".", preset=a.preset)
        manifest = build(cfg)
    except BenchmarkToolError as exc:
        print(f"gpu_bundle: FAILED: {exc}", file=sys.stderr)
        return 1
    for archive in manifest["archives"]:
        print(f"{archive['file']:>18}: {archive['bytes'] / MIB:6.2f} MiB ({archive['unpacked_bytes'] / MIB:.1f} MiB "
              f"unpacked, {archive['members']} files)")
    tree = manifest["working_tree_bytes"]
    print(f"bundle {manifest['total_bytes'] / MIB:.2f} MiB + working tree "
          f"{'not counted' if tree is None else f'{tree / MIB:.2f} MiB'}; headroom "
          f"{manifest['headroom_bytes'] / MIB:.2f} MiB of {manifest['limit_bytes'] / MIB:.0f} MiB "
          f"(Python {manifest['python_version']}) -> {Path(cfg.out) / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
