"""The GPU bundle's package list: pinned wheels -> install target (``triton``, ``stub-site``,
``site``) with the rules of what each keeps and drops.

:data:`PACKAGES` is what the GPU run imports that the GPU machine's Python lacks
(:data:`covidct.benchmarks.gpu_image.GPU_IMAGE_PACKAGES`); :data:`PLATFORMS` the wheel
platforms accepted for that machine. Built into archives by :mod:`covidct.benchmarks.gpu_bundle_build`.
Only the standard library is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from covidct.benchmarks.gpu_image import normalize

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
    BundlePackage("tritonclient==2.73.0", "site", "gRPC client (covidct.client.submit, benchmarks)", drop=(TESTS,)),
    BundlePackage("python-rapidjson==1.25", "site", "imported by tritonclient"),
    BundlePackage("pydicom==3.0.2", "site", "imported by covidct.preprocessing.io (series reader)",
                  drop=(("pydicom/data/test_files/*", "test data"), TESTS)),
    BundlePackage("nibabel==5.4.2", "site", "imported by covidct.preprocessing.io (NIfTI reader)", drop=(TESTS,)),
)
"""What the GPU run imports that :data:`GPU_IMAGE_PACKAGES` lacks (the unit tests import the
run's modules with only those two sets visible), pinned to the versions tested here."""
