"""The ``orthanc`` fixture: a real Orthanc PACS (Debian packages ``orthanc``,
``orthanc-dicomweb``) on free loopback ports with a temporary storage folder, stopped by
PID after the test; skipped with the reason when the packages are absent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from covidct.benchmarks.orthanc import Orthanc, free_port, orthanc_missing_reason, start_orthanc  # noqa: F401 - re-exported


@pytest.fixture
def orthanc(tmp_path) -> Iterator[Orthanc]:
    """A fresh Orthanc per test (empty storage); skipped when the packages are absent."""
    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()
