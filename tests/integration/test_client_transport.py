"""Transport of the client against the real server: shared memory and plain gRPC give
identical results and leave no region behind (also after a rejected request and after a
deadline); what goes over the wire carries no DICOM header value (recorded by a TCP
proxy between the client and the server)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidct.client.shared_memory import REGION_PREFIX
from covidct.client.submit import PipelineClient, submit
from covidct.client.transport import TransportConfig
from covidct.errors import DeadlineExceededError, InferenceFailedError
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.volume import CTVolume

pytestmark = pytest.mark.integration

SHM_DIR = Path("/dev/shm")


def own_regions() -> list[str]:
    """This process's client regions still in /dev/shm."""
    prefix = f"{REGION_PREFIX}_{os.getpid()}_"
    return [p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix)] if SHM_DIR.is_dir() else []


def assert_no_regions(grpc_client) -> None:
    assert grpc_client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    assert own_regions() == []


def test_shared_memory_and_grpc_give_identical_results(triton_server, grpc_client):
    volume = make_phantom(60, size=128, covid=True, seed=11).volume
    with PipelineClient(triton_server.grpc_url, transport=TransportConfig(shared_memory="on")) as client:
        via_shm = client.infer_volume(volume)
    via_grpc = submit(volume, triton_server.grpc_url, transport=TransportConfig(shared_memory="off"))
    auto = submit(volume, triton_server.grpc_url)  # localhost: shared memory chosen automatically
    assert (via_shm.transport, via_grpc.transport, auto.transport) == ("shared_memory", "grpc", "shared_memory")
    np.testing.assert_array_equal(via_shm.selected_indices, via_grpc.selected_indices)
    np.testing.assert_array_equal(via_shm.slice_probabilities, via_grpc.slice_probabilities)
    for field in ("verdict", "assessment", "positive_fraction", "lesion_burden_pct", "lung_volume_ml",
                  "model_versions", "model_card", "mask_spacing_mm"):
        assert getattr(via_shm, field) == getattr(via_grpc, field), field
    for field in ("lung_slices", "lung_mask", "infection_mask"):
        np.testing.assert_array_equal(getattr(via_shm, field), getattr(via_grpc, field), err_msg=field)
    np.testing.assert_array_equal(via_shm.slice_positions_mm, volume.positions_mm[via_shm.selected_indices])
    assert via_shm.verdict == "positive" and via_shm.demo
    m = via_shm.lung_mask.shape[1]
    assert via_shm.lung_mask.shape == (via_shm.lung_slices.size, m, m) and via_shm.lung_slices.size > 0
    assert set(np.unique(via_shm.lung_mask)) == {0, 1, 2}  # both lungs, labelled right 1 / left 2
    assert not via_shm.infection_mask[via_shm.lung_mask == 0].any()  # infection lies inside the lungs
    assert via_shm.infection_mask.any() == (via_shm.lesion_burden_pct > 0)
    assert_no_regions(grpc_client)


def test_regions_are_released_after_a_rejected_request_and_a_deadline(triton_server, grpc_client):
    shm_on = TransportConfig(shared_memory="on", retries=0)
    tiny = CTVolume(  # the client accepts it, the server's preprocess rejects 8x8 slices
        hu=np.full((3, 8, 8), -1000, np.int16),
        spacing_mm=(2.0, 0.7, 0.7),
        positions_mm=np.arange(3.0) * 2.0,
        series_key="tiny",
        source_format="array",
    )
    with pytest.raises(InferenceFailedError, match=r"failed the request \(INVALID_ARGUMENT\): .*expected H, W >= \d+"):
        submit(tiny, triton_server.grpc_url, transport=shm_on)
    assert_no_regions(grpc_client)

    volume = make_phantom(60, size=128, covid=False, seed=12).volume
    with pytest.raises(DeadlineExceededError, match=r"deadline of 0\.001 s exceeded .* may have reached the server"):
        submit(volume, triton_server.grpc_url, transport=TransportConfig(shared_memory="on", timeout_s=0.001))
    assert_no_regions(grpc_client)  # the client waited for the abandoned request to let go
    assert grpc_client.is_server_ready()


class RecordingProxy:
    """A TCP proxy on a free local port to ``target``; records client->server bytes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sent = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def sent(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self._sent.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def test_wire_bytes_carry_no_dicom_header_values(triton_server, tmp_path):
    identifiers = {
        "patient name": "ZZTESTPATIENT^JANEQX",
        "patient id": "PID-8472-XQ",
        "study date": "19871231",
        "institution": "ACME GENERAL HOSPITAL",
    }
    series = tmp_path / "ZZTESTPATIENT_folder"
    volume = make_phantom(60, size=128, covid=True, seed=11).volume
    paths = write_dicom_series(
        volume, series, patient_name=identifiers["patient name"], patient_id=identifiers["patient id"],
        study_date=identifiers["study date"],
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.InstitutionName = identifiers["institution"]
        ds.save_as(path, enforce_file_format=True)
    first = pydicom.dcmread(paths[0])
    identifiers["study uid"] = str(first.StudyInstanceUID)
    identifiers["sop uid"] = str(first.SOPInstanceUID)
    identifiers["file name"] = paths[0].name
    identifiers["folder"] = series.name

    host, port = triton_server.grpc_url.rsplit(":", 1)
    proxy = RecordingProxy((host, int(port)))
    try:
        result = submit(series, f"127.0.0.1:{proxy.port}", transport=TransportConfig(shared_memory="off"))
    finally:
        proxy.close()
    wire = proxy.sent
    assert result.transport == "grpc" and result.verdict == "positive"
    # the capture is real: the model name and the HU voxels are in it
    assert b"covid_ct_pipeline" in wire and b"HU_VOLUME" in wire
    hu = volume.hu.tobytes()
    probes = [hu[i: i + 512] for i in range(0, len(hu) - 512, len(hu) // 16)]
    assert sum(p in wire for p in probes) >= len(probes) // 2
    for what, value in identifiers.items():
        assert value.encode() not in wire, f"{what} {value!r} went over the wire"
    assert result.timings.read_s > 0
