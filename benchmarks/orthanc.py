"""A real Orthanc PACS for the integration tests and benchmarks: plain process, loopback ports,
temporary storage.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (``make setup`` installs
them as root); :func:`orthanc_missing_reason` says why it cannot start when they are absent. Orthanc listens
on free loopback ports (HTTP with DICOMweb at ``/dicom-web/``, DICOM with AE title
``ORTHANC``), keeps its files in the test's temporary folder and is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AET = "ORTHANC"
STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """One running Orthanc: ``http_url`` (REST), ``dicomweb_url`` (service root), DICOM port."""

    process: subprocess.Popen
    http_port: int
    dicom_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def store_address(self) -> str:
        return f"127.0.0.1:{self.dicom_port}:{ORTHANC_AET}"

    def get_json(self, path: str):
        with urllib.request.urlopen(f"{self.http_url}{path}", timeout=10) as response:  # noqa: S310 - loopback
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def orthanc_missing_reason() -> str | None:
    """Why no Orthanc can start here, or ``None``."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc; `make setup` installs it as root)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the DICOMweb plugin {DICOMWEB_PLUGIN} is absent (Debian package orthanc-dicomweb)"
    return None


def start_orthanc(folder: Path, modalities: dict[str, list] | None = None) -> Orthanc:
    """Start Orthanc with its storage, index, config and log under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "covidct-test-pacs",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": modalities or {},
        "DicomCheckCalledAet": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    log_path = folder / "orthanc.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["Orthanc", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(process, http_port, dicom_port, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}; log {log_path}")
        try:
            server.get_json("/system")
            return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within {STARTUP_TIMEOUT_S} s; log {log_path}")
