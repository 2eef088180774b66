"""Shared pytest fixtures: real-data location, temporary output folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def bundle_modules() -> list[Path]:
    """Every .py file Python imports as covidct.* (covidct/ and the folders it links)."""
    import covidct

    root = Path(covidct.__file__).parent
    return sorted(
        Path(folder, name)
        for folder, _, names in os.walk(root, followlinks=True)
        if "__pycache__" not in folder
        for name in names
        if name.endswith(".py")
    )


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The COVID-CT-MD sample series (folder with P002/, cap002/, normal002/, labels.csv).

    Located through the environment variable COVIDCT_DATA_DIR; skipped when unset or absent.
    """
    value = os.environ.get("COVIDCT_DATA_DIR", "")
    if not value:
        pytest.skip("COVIDCT_DATA_DIR is not set: real COVID-CT-MD series not available")
    path = Path(value)
    if not (path / "labels.csv").is_file():
        pytest.skip(f"COVIDCT_DATA_DIR={value} holds no labels.csv: real series not available")
    return path
