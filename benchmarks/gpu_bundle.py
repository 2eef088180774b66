"""The GPU machine's bundle: what the GPU run needs that its interpreter lacks, stripped to fit.

The GPU machine has no network; its Python (torch with CUDA, numpy 2, scipy, onnx,
onnxruntime, grpcio, protobuf, ... : :data:`covidct.benchmarks.gpu_image.GPU_IMAGE_PACKAGES`) lacks the Triton server,
the Triton client and the DICOM/NIfTI readers the client imports. Everything that travels
there (working tree + bundle) must stay under
:data:`~covidct.benchmarks.gpu_bundle_build.TRANSFER_LIMIT_BYTES` (64 MiB), so the wheels of
:data:`~covidct.benchmarks.gpu_bundle_packages.PACKAGES` are downloaded for the target Python,
stripped and packed into one ``.tar.xz`` per install target (the server's kept files: 25.2 MB
as ``.tar.xz`` against 39.3 MB deflated inside the wheel):

- ``triton.tar.xz`` -> ``<dest>/triton`` (``$COVIDCT_TRITON_DIR``): ``nvidia-pytriton``
  without its Python package, with ``tritonserver``, the Python backend, the one
  Python-backend stub for the target Python and only the bundled libraries those ELF
  files need (``DT_NEEDED`` closure, read from the files:
  :func:`~covidct.benchmarks.gpu_bundle_build.elf_needed`);
- ``stub-site.tar.xz`` -> ``<dest>/triton/stub-site``: numpy 1.26 for the stub (Triton
  2.51's stub answers empty tensors with numpy 2), without its test suites;
- ``site.tar.xz`` -> ``<dest>/site`` (put on ``PYTHONPATH``): the client side
  (tritonclient and python-rapidjson, pydicom and nibabel), without test suites, test
  data and binaries (``*.data/scripts``, ``*.data/data``: perf_analyzer and friends).

``manifest.json`` lists every archive (bytes, sha256, what it holds and what was dropped),
the total, the working tree that travels beside it (git's tracked and untracked,
not ignored files) and the headroom; the build fails when bundle + tree exceed the limit.

This module is the command line (build here, install there); the parts:

- :mod:`covidct.benchmarks.gpu_bundle_packages`: the package list (wheel -> target, keep/drop rules);
- :mod:`covidct.benchmarks.gpu_bundle_build`: wheels -> stripped archives + manifest, size check;
- :mod:`covidct.benchmarks.gpu_bundle_install`: archives + manifest -> checked, unpacked folders.

    python -m covidct.benchmarks.gpu_bundle --out gpu_bundle --python-version 3.12     # make gpu-bundle
    python -m covidct.benchmarks.gpu_bundle --install gpu_bundle --dest WORK/env        # on the GPU machine

Only the standard library is imported: the installer runs before anything else exists.
Sizes are bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from covidct.benchmarks.gpu_bundle_build import MIB, BundleConfig, build
from covidct.benchmarks.gpu_bundle_install import MANIFEST, install
from covidct.errors import BenchmarkToolError


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
