"""Client pieces that need no Triton server: transport settings, TLS file checks, exit
codes, the report and its JSON schema, the CLI's argument and input errors, and a
server that is down (a free port with nothing listening: real gRPC, no mock)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from client.batch import ExitCode, PatientOutcome, batch_exit_code, exit_code_of
from client.cli import collect_inputs, main
from client.report import report_dict, validate_report
from client.result import PipelineResult, Timings
from client.submit import PipelineClient, submit
from client.transport import TransportConfig, connect, is_local_url
from covidct.errors import (
    ClientError,
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    PixelDecodeError,
    ServerUnavailableError,
    TLSConfigError,
)
from preprocessing.synthetic.phantom import make_phantom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_result(verdict: int) -> PipelineResult:
    return PipelineResult(
        verdict=verdict,
        positive_fraction=0.5 * verdict,
        vote_threshold=0.3,
        slice_probabilities=np.array([0.2, 0.9], np.float32),
        selected_indices=np.array([3, 4], np.int32),
        lesion_burden_pct=1.5,
        lung_volume_ml=2500.0,
        model_versions=("classifier=cnn6:1:sha256:ab",),
        latency_s=0.4,
        slice_positions_mm=np.array([6.0, 8.0]),
        num_slices=10,
        transport="grpc",
        timings=Timings(read_s=0.1, prepare_s=0.01, round_trip_s=0.4, total_s=0.52),
    )


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("localhost:8001", True),
        ("127.0.0.1:8001", True),
        ("127.3.2.1:9", True),
        ("[::1]:8001", True),
        ("unix:/tmp/triton.sock", True),
        ("10.0.0.5:8001", False),
        ("triton.hospital.org:8001", False),
    ],
)
def test_local_url_detection(url, local):
    assert is_local_url(url) is local


def test_transport_config_rejects_bad_values():
    with pytest.raises(ClientError, match=r"shared_memory='maybe'; expected one of \('auto', 'on', 'off'\)"):
        TransportConfig(shared_memory="maybe")
    with pytest.raises(ClientError, match=r"timeouts must be > 0 s; got timeout_s=0"):
        TransportConfig(timeout_s=0)


def test_tls_files_are_checked(tmp_path):
    missing = tmp_path / "ca.pem"
    with pytest.raises(TLSConfigError, match=r"TLS root certificate .*ca\.pem: cannot be read"):
        connect("localhost:1", TransportConfig(root_certificates=missing))
    not_pem = tmp_path / "junk.pem"
    not_pem.write_bytes(b"hello")
    with pytest.raises(TLSConfigError, match=r"junk\.pem: not a PEM file"):
        connect("localhost:1", TransportConfig(root_certificates=not_pem))
    with pytest.raises(TLSConfigError, match=r"needs both private_key and certificate_chain"):
        connect("localhost:1", TransportConfig(private_key=not_pem))


def test_exit_codes_of_errors_and_batches():
    assert exit_code_of(PixelDecodeError("x")) == ExitCode.BAD_INPUT
    assert exit_code_of(ServerUnavailableError("x")) == ExitCode.SERVER_UNAVAILABLE
    assert exit_code_of(DeadlineExceededError("x")) == ExitCode.DEADLINE
    assert exit_code_of(TLSConfigError("x")) == ExitCode.TLS
    assert exit_code_of(ModelNotReadyError("x")) == ExitCode.MODEL_NOT_READY
    assert exit_code_of(RuntimeError("x")) == ExitCode.INTERNAL
    negative, positive = PatientOutcome("a", fake_result(0)), PatientOutcome("b", fake_result(1))
    bad = PatientOutcome.failed("c", PixelDecodeError("broken"))
    assert batch_exit_code([negative]) == ExitCode.NEGATIVE
    assert batch_exit_code([negative, positive]) == ExitCode.POSITIVE
    assert batch_exit_code([bad]) == ExitCode.BAD_INPUT
    assert batch_exit_code([negative, bad]) == ExitCode.PARTIAL


def test_report_matches_schema_and_lists_every_input():
    outcomes = [
        PatientOutcome("a", fake_result(0)),
        PatientOutcome.failed("b", PixelDecodeError("b/IM0001.dcm: cannot decode")),
        PatientOutcome("c", fake_result(1)),
    ]
    document = report_dict(outcomes, url="localhost:8001", model="covid_ct_pipeline")
    validate_report(json.loads(json.dumps(document)))
    assert [p["input"] for p in document["patients"]] == ["a", "b", "c"]
    assert document["patients"][1]["error"] == {"type": "PixelDecodeError", "message": "b/IM0001.dcm: cannot decode"}
    assert document["summary"] == {"patients": 3, "succeeded": 2, "failed": 1, "positive": 1, "negative": 1}
    assert document["exit_code"] == ExitCode.PARTIAL
    import jsonschema

    document["patients"][0]["result"]["verdict"] = 2
    with pytest.raises(jsonschema.ValidationError, match=r"2 is not one of \[0, 1\]"):
        validate_report(document)


def test_collect_inputs_from_folder_and_list(tmp_path):
    patients = tmp_path / "patients"
    (patients / "p1").mkdir(parents=True)
    (patients / "p2.zip").write_bytes(b"")
    (patients / "p3.nii.gz").write_bytes(b"")
    (patients / "notes.txt").write_text("x")
    listing = tmp_path / "cases.txt"
    listing.write_text("# cases\nrel/series\n\n/abs/series\n")
    found = collect_inputs([tmp_path / "one"], patients, listing)
    assert [p.name for p in found] == ["one", "p1", "p2.zip", "p3.nii.gz", "series", "series"]
    assert found[4] == tmp_path / "rel" / "series"
    with pytest.raises(InputError, match=r"no series given"):
        collect_inputs([], None, None)
    with pytest.raises(InputError, match=r"--list .*missing\.txt: cannot be read"):
        collect_inputs([], None, tmp_path / "missing.txt")


def test_cli_usage_errors_give_exit_code_2(tmp_path, capsys):
    assert main([]) == ExitCode.BAD_INPUT
    assert "no series given" in capsys.readouterr().err
    assert main(["--concurrency", "x", "a"]) == ExitCode.BAD_INPUT
    assert main([str(tmp_path), "--header", "novalue"]) == ExitCode.BAD_INPUT
    assert "--header 'novalue': expected KEY=VALUE" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_server_down_gives_server_unavailable_after_retries(tmp_path, capsys):
    url = f"127.0.0.1:{free_port()}"
    volume = make_phantom(4, size=64, covid=False, seed=1).volume
    transport = TransportConfig(retries=1, backoff_s=0.05, connect_timeout_s=2)
    with pytest.raises(ServerUnavailableError, match=rf"no server answers at {url} \(is Triton running\?\)"):
        submit(volume, url, transport=transport)
    with PipelineClient(url, transport=transport) as client:
        with pytest.raises(ServerUnavailableError, match=r"readiness check"):
            client.wait_ready()
    code = main([str(tmp_path), "--url", url, "--retries", "0", "--json"])
    assert code == ExitCode.SERVER_UNAVAILABLE
    document = json.loads(capsys.readouterr().out)
    validate_report(document)
    assert document["patients"][0]["error"]["type"] == "ServerUnavailableError"
