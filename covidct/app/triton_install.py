"""Find the pip-installed Triton Inference Server and prepare it to serve the bundle.

Turns a folder (``triton_dir``, else ``$COVIDCT_TRITON_DIR``, else ``<cwd>/.triton``) into a
:class:`TritonInstall` (the paths of the server binary, its backends, bundled libraries and
Python-backend stubs), installs into that folder's backend directory the stub built for
the running interpreter and the bundle's Python-based backend ``covidct``
(:mod:`covidct.serving.backend`), and turns the installation into the environment variables
the server and its stubs need (see docs/architecture.md, "The serving environment").

The server, its libraries and the stubs come from the wheel ``nvidia-pytriton==0.7.0``
installed with ``--no-deps --target .triton`` (``make setup``), numpy 1.26 for the stubs
from ``.triton/stub-site``. :mod:`covidct.app.triton_server` starts the server from it.
Files are copied whole (no sizes to choose); nothing here waits or times out.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from covidct.errors import ServerError
from covidct.serving.backend import BACKEND_NAME, backend_model_file

TRITON_DIR_ENV = "COVIDCT_TRITON_DIR"
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    """Paths of one installed server (``<triton_dir>`` is the ``--target`` of the pip install)."""

    root: Path
    server_bin: Path
    backend_dir: Path
    libs_dir: Path
    stubs_dir: Path
    stub_site: Path

    @property
    def python_backend_dir(self) -> Path:
        return self.backend_dir / "python"


def locate_triton(triton_dir: Path | str | None = None) -> TritonInstall:
    """Find the installed server: ``triton_dir``, else ``$COVIDCT_TRITON_DIR``, else ``<repo>/.triton``.

    Raises ServerError naming the missing path and telling to run ``make setup``.
    """
    if triton_dir is None:
        triton_dir = os.environ.get(TRITON_DIR_ENV) or Path.cwd() / ".triton"
    root = Path(triton_dir).resolve()
    server_root = root / "pytriton" / "tritonserver"
    install = TritonInstall(
        root=root,
        server_bin=server_root / "bin" / "tritonserver",
        backend_dir=server_root / "backends",
        libs_dir=root / "nvidia_pytriton.libs",
        stubs_dir=server_root / "python_backend_stubs",
        stub_site=root / "stub-site",
    )
    required = (
        install.server_bin,
        install.python_backend_dir / "libtriton_python.so",
        install.libs_dir,
        install.stubs_dir,
        install.stub_site / "numpy",
    )
    for path in required:
        if not path.exists():
            raise ServerError(
                f"Triton server installation incomplete: {path} does not exist "
                f"(looked in {root}; set {TRITON_DIR_ENV} or run `make setup`, which installs "
                f"nvidia-pytriton==0.7.0 into .triton and numpy 1.26 into .triton/stub-site)"
            )
    return install


def prepare_stub(install: TritonInstall, python_version: tuple[int, int] | None = None) -> Path:
    """Put the Python-backend stub built for ``python_version`` (default: this interpreter)
    into the Python backend's folder. Copies only when the file differs; the copy is
    atomic, so servers started at the same time never see a half-written stub."""
    major, minor = python_version or sys.version_info[:2]
    source = install.stubs_dir / f"{major}.{minor}" / STUB_NAME
    if not source.is_file():
        available = sorted(p.name for p in install.stubs_dir.iterdir() if p.is_dir())
        raise ServerError(
            f"no Python-backend stub for Python {major}.{minor} in {install.stubs_dir} "
            f"(available: {', '.join(available)})"
        )
    target = install.python_backend_dir / STUB_NAME
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=f".{STUB_NAME}.", dir=install.python_backend_dir)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, target)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise ServerError(f"cannot install the Python-backend stub {source} -> {target}: {exc}") from exc
    return target


def package_root() -> Path:
    """The folder the bundle's packages are imported from (site-packages, or the checkout
    of an editable install, whose import hook the stub does not run)."""
    import covidct

    return Path(covidct.__file__).resolve().parents[1]


def prepare_backend(install: TritonInstall) -> Path:
    """Install the bundle's Python-based backend: ``<backend-directory>/covidct/model.py``
    (:mod:`covidct.serving.backend`). Copies only when the file differs, atomically."""
    source = backend_model_file()
    target_dir = install.backend_dir / BACKEND_NAME
    target = target_dir / source.name
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return target
    try:
        target_dir.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".model.", suffix=".py", dir=target_dir)
        os.close(fd)
        shutil.copyfile(source, tmp_name)
        os.replace(tmp_name, target)
    except OSError as exc:
        raise ServerError(f"cannot install the {BACKEND_NAME!r} backend {source} -> {target}: {exc}") from exc
    return target


def stub_pythonpath(install: TritonInstall) -> list[str]:
    """The stub's import path, in order: numpy 1.26 site, this venv's site-packages, the
    bundle's import root (:func:`package_root`)."""
    site_packages = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    entries = [str(install.stub_site), *site_packages, str(package_root())]
    return list(dict.fromkeys(entries))


def build_environment(install: TritonInstall, base_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the server and its stubs (libpython + bundled libs, PYTHONHOME, PYTHONPATH).

    The stub embeds the interpreter whose ``libpython`` it finds on ``LD_LIBRARY_PATH``;
    its ``sys.path`` ignores ``PYTHONPATH``, so the backend's ``model.py`` prepends these entries.
    """
    env = dict(os.environ if base_env is None else base_env)
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    ld_paths = [libdir, str(install.libs_dir)]
    if env.get("LD_LIBRARY_PATH"):
        ld_paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld_paths)
    env["PYTHONHOME"] = sys.base_prefix
    env["PYTHONPATH"] = os.pathsep.join(stub_pythonpath(install))
    return env
