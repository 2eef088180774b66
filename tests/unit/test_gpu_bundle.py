"""The GPU bundle builder: wheel selection, stripping (the server's ELF closure), the
manifest, the size limit, the installer's checks, and the import guard that emulates the
GPU machine. The wheels are real zip files built here (tiny, no network); the ELF files
are minimal real ELF64 files with a ``.dynamic`` section."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from covidct.benchmarks.gpu_bundle_build import (
    REJECTED_MANIFEST,
    BundleConfig,
    build,
    elf_needed,
    select_wheel,
    working_tree_bytes,
)
from covidct.benchmarks.gpu_bundle_install import MANIFEST, install, sha256_of
from covidct.benchmarks.gpu_bundle_packages import PACKAGES
from covidct.benchmarks.gpu_image import GPU_IMAGE_PACKAGES, PROJECT_DISTRIBUTION
from covidct.errors import BenchmarkToolError

PY = "%d.%d" % sys.version_info[:2]
CP = "cp" + PY.replace(".", "")
REPO_ROOT = Path(__file__).resolve().parents[2]
STUBS = "pytriton/tritonserver/python_backend_stubs"


def elf(*needed: str) -> bytes:
    """A minimal 64-bit little-endian ELF file whose ``.dynamic`` section lists ``needed``."""
    strtab, offsets = b"\0", []
    for name in needed:
        offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    strtab += b"\0" * (-len(strtab) % 8)
    dynamic = b"".join(struct.pack("<qQ", 1, o) for o in offsets) + struct.pack("<qQ", 0, 0)
    dyn_off = 64 + len(strtab)
    sh_off = dyn_off + len(dynamic)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 0)
    sections = bytes(64) + struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, 64, len(strtab), 0, 0, 1, 0) + struct.pack(
        "<IIQQQQIIQQ", 0, 6, 0, 0, dyn_off, len(dynamic), 1, 0, 8, 16)
    return header + strtab + dynamic + sections


def write_wheel(folder: Path, filename: str, members: dict[str, bytes]) -> Path:
    name, version = filename.split("-")[:2]
    info = f"{name}-{version}.dist-info"
    members = {**members, f"{info}/METADATA": f"Name: {name}\nVersion: {version}\n".encode(), f"{info}/RECORD": b""}
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / filename, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in members.items():
            archive.writestr(path, data)
    return folder / filename


def fake_wheels(folder: Path) -> Path:
    """One small wheel per bundle package, laid out like the real ones."""
    libs = "nvidia_pytriton.libs"
    write_wheel(folder, "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl", {
        "pytriton/__init__.py": b"# the PyTriton package\n",
        "pytriton/tritonserver/bin/tritonserver": elf("libtritonserver-1a.so", "libc.so.6"),
        "pytriton/tritonserver/backends/python/libtriton_python.so": elf("libtritonserver-1a.so", "libarchive-2b.so"),
        "pytriton/tritonserver/backends/python/triton_python_backend_utils.py": b"# utils\n",
        f"{STUBS}/{PY}/triton_python_backend_stub": elf("libcudart-3c.so", f"libpython{PY}.so.1.0"),
        f"{STUBS}/3.8/triton_python_backend_stub": elf("libcudart-3c.so", "libpython3.8.so.1.0"),
        "pytriton/tritonserver/caches/local/libtritoncache_local.so": elf("libtritonserver-1a.so"),
        f"{libs}/libtritonserver-1a.so": elf("libcudart-3c.so"),
        f"{libs}/libarchive-2b.so": elf("libxml2-4d.so"),
        f"{libs}/libxml2-4d.so": elf(),
        f"{libs}/libcudart-3c.so": elf(),
        f"{libs}/libpython3-5e.13.so.1.0": elf(),
        "nvidia_pytriton-0.7.0.data/scripts/pytriton": b"#!python\n",
    })
    write_wheel(folder, f"numpy-1.26.4-{CP}-{CP}-manylinux_2_17_x86_64.whl", {
        "numpy/__init__.py": b"__version__ = '1.26.4'\n", "numpy/core/tests/test_core.py": b"def test(): pass\n"})
    write_wheel(folder, "tritonclient-2.73.0-py3-none-any.whl", {
        "tritonclient-2.73.0.data/purelib/tritonclient/__init__.py": b"# client\n",
        "tritonclient-2.73.0.data/data/bin/perf_analyzer": elf("libc.so.6")})
    write_wheel(folder, f"python_rapidjson-1.25-{CP}-{CP}-manylinux_2_28_x86_64.whl", {
        f"rapidjson.{CP}-x86_64-linux-gnu.so": elf("libc.so.6")})
    write_wheel(folder, "pydicom-3.0.2-py3-none-any.whl", {
        "pydicom/__init__.py": b"# pydicom\n", "pydicom/data/test_files/CT_small.dcm": bytes(4096)})
    write_wheel(folder, "nibabel-5.4.2-py3-none-any.whl", {
        "nibabel/__init__.py": b"# nibabel\n", "nibabel/tests/test_io.py": b"def test(): pass\n"})
    return folder


def members(archive: Path) -> set[str]:
    with tarfile.open(archive, "r:xz") as tar:
        return set(tar.getnames())


@pytest.fixture()
def bundle(tmp_path) -> tuple[Path, dict]:
    wheels = fake_wheels(tmp_path / "wheels")
    cfg = BundleConfig(out=str(tmp_path / "bundle"), python_version=PY, wheels=str(wheels), working_tree=None,
                       preset=1)
    return tmp_path / "bundle", build(cfg)


def test_elf_needed_reads_the_dynamic_section():
    assert elf_needed(elf("libtritonserver-1a.so", "libc.so.6")) == ("libtritonserver-1a.so", "libc.so.6")
    assert elf_needed(elf()) == ()
    assert elf_needed(b"#!/bin/sh\necho not an ELF file\n") == ()


def test_build_keeps_what_the_server_loads_and_drops_the_rest(bundle):
    folder, manifest = bundle
    server = members(folder / "triton.tar.xz")
    libs = {m.split("/")[-1] for m in server if m.startswith("nvidia_pytriton.libs/")}
    assert libs == {"libtritonserver-1a.so", "libarchive-2b.so", "libxml2-4d.so", "libcudart-3c.so"}
    assert f"{STUBS}/{PY}/triton_python_backend_stub" in server
    assert f"{STUBS}/3.8/triton_python_backend_stub" not in server
    assert not any(m.startswith(("pytriton/__init__", "pytriton/tritonserver/caches", "bin/")) for m in server)
    assert members(folder / "stub-site.tar.xz") == {"numpy/__init__.py", "numpy-1.26.4.dist-info/METADATA",
                                                    "numpy-1.26.4.dist-info/RECORD"}
    site = members(folder / "site.tar.xz")
    assert {"tritonclient/__init__.py", "pydicom/__init__.py", "nibabel/__init__.py"} <= site
    assert not any("test" in m or "perf_analyzer" in m for m in site)
    dropped = manifest["archives"][0]["packages"][0]["dropped"]
    assert dropped["library no executable needs (libpython3-5e.13.so.1.0)"]["files"] == 1


def test_manifest_lists_every_archive_with_size_and_sha256(bundle):
    folder, manifest = bundle
    assert json.loads((folder / MANIFEST).read_text()) == manifest
    assert {a["file"] for a in manifest["archives"]} == {p.name for p in folder.glob("*.tar.xz")}
    for archive in manifest["archives"]:
        path = folder / archive["file"]
        assert archive["bytes"] == path.stat().st_size and archive["sha256"] == sha256_of(path)
    assert manifest["total_bytes"] == sum(a["bytes"] for a in manifest["archives"])
    assert manifest["headroom_bytes"] == manifest["limit_bytes"] - manifest["total_bytes"]
    assert manifest["python_version"] == PY and manifest["working_tree_bytes"] is None


def test_over_the_limit_fails_and_leaves_no_installable_manifest(tmp_path):
    wheels = fake_wheels(tmp_path / "wheels")
    cfg = BundleConfig(out=str(tmp_path / "bundle"), python_version=PY, wheels=str(wheels), working_tree=None,
                       limit_bytes=100, preset=1)
    with pytest.raises(BenchmarkToolError, match=r"bundle .* MiB \+ working tree 0\.0 MiB = .*bytes > 100 bytes"):
        build(cfg)
    assert not (tmp_path / "bundle" / MANIFEST).exists()
    assert json.loads((tmp_path / "bundle" / REJECTED_MANIFEST).read_text())["headroom_bytes"] < 0
    with pytest.raises(BenchmarkToolError, match="no readable bundle manifest"):
        install(tmp_path / "bundle", tmp_path / "env")


def test_select_wheel_needs_exactly_one_for_the_python(tmp_path):
    numpy = next(p for p in PACKAGES if p.name == "numpy")
    write_wheel(tmp_path, "numpy-1.26.4-cp39-cp39-manylinux_2_17_x86_64.whl", {"numpy/__init__.py": b""})
    with pytest.raises(BenchmarkToolError, match=rf"no wheel of numpy==1\.26\.4 for Python {PY}"):
        select_wheel(numpy, tmp_path, PY)
    write_wheel(tmp_path, f"numpy-1.26.4-{CP}-{CP}-manylinux_2_17_x86_64.whl", {"numpy/__init__.py": b""})
    assert select_wheel(numpy, tmp_path, PY).name.startswith(f"numpy-1.26.4-{CP}")
    write_wheel(tmp_path, f"numpy-1.26.4-{CP}-{CP}-manylinux_2_28_x86_64.whl", {"numpy/__init__.py": b""})
    with pytest.raises(BenchmarkToolError, match="2 wheels"):
        select_wheel(numpy, tmp_path, PY)


def test_install_lays_out_what_the_launcher_finds(bundle, tmp_path):
    from covidct.app.triton_install import locate_triton, prepare_stub

    folder, _ = bundle
    paths = install(folder, tmp_path / "env")
    triton = locate_triton(paths["triton"])
    assert os.access(triton.server_bin, os.X_OK)
    assert prepare_stub(triton).read_bytes() == elf("libcudart-3c.so", f"libpython{PY}.so.1.0")
    assert (Path(paths["stub-site"]) / "numpy" / "__init__.py").is_file()
    assert (Path(paths["site"]) / "tritonclient" / "__init__.py").is_file()


def test_install_refuses_a_truncated_archive_or_another_python(bundle, tmp_path):
    folder, manifest = bundle
    site = folder / "site.tar.xz"
    site.write_bytes(site.read_bytes()[:-100])
    with pytest.raises(BenchmarkToolError, match=r"site\.tar\.xz: .*sha256 differs from the manifest"):
        install(folder, tmp_path / "env")
    (folder / MANIFEST).write_text(json.dumps({**manifest, "python_version": "3.8"}))
    with pytest.raises(BenchmarkToolError, match=rf"bundle built for Python 3\.8; this interpreter .* is Python {PY}"):
        install(folder, tmp_path / "env2")


def test_working_tree_counts_tracked_and_untracked_files_but_not_ignored_ones(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/gpu_bundle/\n")
    (tmp_path / "code.py").write_bytes(b"x" * 1000)
    (tmp_path / "gpu_bundle").mkdir()
    (tmp_path / "gpu_bundle" / "triton.tar.xz").write_bytes(b"y" * 5000)
    assert working_tree_bytes(tmp_path) == 1000 + len("/gpu_bundle/\n")
    assert working_tree_bytes(tmp_path / "gpu_bundle" / "missing") is None


GUARDED_IMPORT = """
import importlib, sys
from covidct.benchmarks.gpu_image import guard_imports
guard_imports(None if sys.argv[1] == "bundle" else frozenset(sys.argv[1].split(",")))
for module in sys.argv[2:]:
    importlib.import_module(module)
print("imported", len(sys.argv) - 2)
"""
RUN_MODULES = (
    "covidct.benchmarks.gpu_parity", "covidct.benchmarks.gpu_run", "covidct.benchmarks.paper_comparison",
    "covidct.benchmarks.throughput", "covidct.export.repository", "covidct.client.submit", "covidct.app.triton_server",
    "tritonclient.grpc", "torch.onnx", "onnxscript", "matplotlib.pyplot",
)
STUB_MODULES = (
    "covidct.serving.step_model", "covidct.serving.runners", "covidct.training.checkpoint", "covidct.training.heads",
    "covidct.training.models", "torch", "onnxruntime",
)


def guarded(allowed: str, *modules: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GUARDED_IMPORT, allowed, *modules], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_run_imports_with_only_the_gpu_image_and_the_bundle():
    client = guarded("bundle", *RUN_MODULES)
    assert client.returncode == 0, client.stderr[-2000:]
    stub = guarded(",".join(GPU_IMAGE_PACKAGES | {PROJECT_DISTRIBUTION}), *STUB_MODULES)  # the stub: no client site
    assert stub.returncode == 0, stub.stderr[-2000:]
    refused = guarded("bundle", "covidct.client.dicom_seg")  # DICOM SEG needs highdicom: neither there nor bundled
    assert refused.returncode != 0
    assert "No module named 'highdicom' (its distribution highdicom is neither on the GPU machine" in refused.stderr
    assert {p.name for p in PACKAGES} & GPU_IMAGE_PACKAGES == {"numpy"}  # only the stub's own numpy 1.26
