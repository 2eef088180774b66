"""The wheel a hospital installs: one import name, ``covidct``, and both console scripts working.

Builds the wheel of this checkout (``pip wheel``, no build isolation: the build backend of
this environment, nothing downloaded), installs it into a fresh virtual environment with
that environment's own pip, and gives it its dependencies from this machine (a ``.pth``
line naming this environment's site-packages; its ``.pth`` files, the editable install's
import hook among them, are not run). Then, from a folder outside the checkout, it looks at
what the wheel put into site-packages and runs the installed code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

# The folders of the repository that are importable only as covidct.<name> once installed.
OLD_TOP_LEVEL_NAMES = ("client", "training", "export", "preprocessing", "benchmarks", "model_repository")


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("setuptools", minversion="77", reason="building the wheel needs setuptools >= 77 here")
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "-w", str(dist), str(REPO_ROOT)], cwd=root)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    wheels = sorted(dist.glob("covidct_triton-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {dist}: {wheels}"

    venv = root / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    assert created.returncode == 0, f"python -m venv failed:\n{created.stderr[-3000:]}"
    python = venv / "bin" / "python"
    install = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheels[0])], cwd=root)
    assert install.returncode == 0, f"pip install of the wheel failed:\n{install.stdout[-3000:]}\n{install.stderr}"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    # Dependencies from this machine: this environment's site-packages as a plain path entry.
    (site / "zz_machine_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return {"wheel": wheels[0], "venv": venv, "python": python, "site": site, "cwd": root}


def test_the_wheel_installs_one_top_level_name(installed: dict[str, Path]) -> None:
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"covidct"}, f"wheel top-level entries: {tops}"
    site = installed["site"]
    records = next(site.glob("covidct_triton-*.dist-info")).joinpath("RECORD").read_text(encoding="utf-8")
    installed_tops = {line.split(",")[0].split("/")[0] for line in records.splitlines() if line}
    assert {t for t in installed_tops if not t.endswith(".dist-info") and t != ".."} == {"covidct"}
    left = [name for name in OLD_TOP_LEVEL_NAMES if (site / name).exists() or (site / f"{name}.py").exists()]
    assert left == [], f"site-packages holds old top-level names: {left}"


def test_the_installed_namespace_imports_from_site_packages(installed: dict[str, Path]) -> None:
    code = (
        "import covidct, covidct.client, covidct.client.submit\n"
        "from covidct.serving import source_repository\n"
        "from covidct.training.shipped import shipped_checkpoint\n"
        "print(covidct.__file__)\n"
        "print(sorted(p.parent.name for p in source_repository().glob('*/config.pbtxt')))\n"
        "print(shipped_checkpoint('classifier'))\n"
    )
    done = _run([str(installed["python"]), "-c", code], cwd=installed["cwd"])
    assert done.returncode == 0, f"importing the installed bundle failed:\n{done.stderr[-3000:]}"
    package_file, models, classifier = done.stdout.strip().splitlines()
    assert Path(package_file).is_relative_to(installed["site"]), f"covidct came from {package_file}"
    assert "covid_ct_pipeline" in models and "preprocess" in models, models
    assert Path(classifier).is_relative_to(installed["site"]) and Path(classifier, "model_card.json").is_file()


@pytest.mark.parametrize(
    ("script", "usage"), [("covidct-client", "usage: covidct-client"), ("covidct", "usage: covidct")]
)
def test_the_console_scripts_run(installed: dict[str, Path], script: str, usage: str) -> None:
    done = _run([str(installed["venv"] / "bin" / script), "--help"], cwd=installed["cwd"], timeout=120)
    assert done.returncode == 0, f"{script} --help failed:\n{done.stderr[-3000:]}"
    assert done.stdout.startswith(usage), done.stdout[:300]
