"""``covidct-client`` against the real server: answers of synthetic DICOM patients
(positive / negative / not assessable), schema-valid JSON, overlays of the server's masks,
a batch at concurrency 8 that reports every input once, not-assessable series next to
answered ones, and one error / exit code per failure kind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from covidct.client.answer import DEMO_WARNING
from covidct.client.batch import ExitCode
from covidct.client.cli import main
from covidct.client.report import validate_report
from covidct.client.submit import submit
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.volume import CTVolume

pytestmark = pytest.mark.integration


def write_patient(folder: Path, num_slices: int, size: int, covid: bool, seed: int):
    volume = make_phantom(num_slices, size=size, covid=covid, seed=seed).volume
    write_dicom_series(volume, folder, patient_name=f"TEST^{seed}", patient_id=f"ID{seed}")
    return volume


def all_air_volume(num_slices: int = 40, size: int = 128) -> CTVolume:
    """Nothing but air (-1000 HU) at adult chest spacing: no body, no lungs."""
    return CTVolume(
        hu=np.full((num_slices, size, size), -1000, np.int16),
        spacing_mm=(5.0, 3.0, 3.0),
        positions_mm=np.arange(num_slices) * 5.0,
        series_key="all_air",
        source_format="array",
    )


def rotated_phantom(num_slices: int, size: int, seed: int) -> CTVolume:
    """A phantom turned by 90 degrees in-plane: the spine lies at the side, not posterior."""
    volume = make_phantom(num_slices, size=size, covid=False, seed=seed).volume
    return dataclasses.replace(volume, hu=np.ascontiguousarray(np.rot90(volume.hu, axes=(1, 2))))


def write_corrupt(folder: Path) -> Path:
    """A DICOM series whose slice 5 has truncated pixel data (PixelDecodeError)."""
    paths = write_dicom_series(make_phantom(20, size=64, covid=False, seed=1).volume, folder)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) // 2])
    return paths[5]


def run_json(capsys, argv: list[str]) -> tuple[int, dict, str]:
    code = main([*argv, "--json", "--no-progress"])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    validate_report(document)
    return code, document, captured.err


def test_cli_verdicts_json_and_overlays(triton_server, tmp_path, capsys):
    patients = tmp_path / "patients"
    positive = write_patient(patients / "a_positive", 60, 128, True, 11)
    write_patient(patients / "b_negative", 50, 128, False, 12)
    overlays = tmp_path / "overlays"
    report_file = tmp_path / "report.json"
    code, document, _ = run_json(
        capsys,
        ["--patients", str(patients), "--url", triton_server.grpc_url, "--overlay", str(overlays),
         "--overlay-max-slices", "3", "--output", str(report_file)],
    )
    assert code == ExitCode.POSITIVE
    assert json.loads(report_file.read_text()) == document
    by_name = {Path(p["input"]).name: p for p in document["patients"]}
    assert set(by_name) == {"a_positive", "b_negative"}
    assert (by_name["a_positive"]["exit_code"], by_name["b_negative"]["exit_code"]) == (10, 0)
    pos, neg = by_name["a_positive"]["result"], by_name["b_negative"]["result"]
    assert (pos["verdict"], neg["verdict"]) == ("positive", "negative")
    assert pos["assessment"] == {"assessable": True, "reasons": [], "warnings": [],
                                 "measurements": pos["assessment"]["measurements"]}
    assert set(pos["model_card"]) == {"classifier", "segmenter"}  # the served demo models carry their cards
    assert pos["demo"] is True and pos["demo_warning"] == DEMO_WARNING
    assert set(pos["selected_indices"]) <= set(pos["lung_slices"])  # the classifier saw lung-bearing slices
    assert 0 <= pos["lesion_burden_pct"] <= 100 and neg["lung_volume_ml"] > 0
    assert pos["transport"] == "shared_memory"
    assert pos["slice_positions_mm"] == pytest.approx(positive.positions_mm[pos["selected_indices"]].tolist())
    assert len(pos["slice_probabilities"]) == len(pos["selected_indices"]) > 0
    assert pos["timings"]["read_s"] > 0 and pos["timings"]["total_s"] >= pos["timings"]["round_trip_s"]
    pngs = sorted((overlays / "a_positive").glob("*.png"))
    assert len(pngs) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    ranked = np.argsort(-np.array(pos["slice_probabilities"]), kind="stable")[:3]
    top3 = np.sort(np.array(pos["selected_indices"])[ranked])
    assert [p.name for p in pngs] == [f"a_positive_z{i:04d}.png" for i in top3]

    code = main([str(patients / "b_negative"), "--url", triton_server.grpc_url, "--no-progress"])
    table = capsys.readouterr().out
    assert code == ExitCode.NEGATIVE
    assert "negative*" in table and "1 patients: 0 positive, 1 negative, 0 not assessable, 0 failed" in table
    assert f"* {DEMO_WARNING}" in table.splitlines() and "models: classifier " in table


def test_not_assessable_series_have_exit_code_11_and_leave_the_batch_unaffected(triton_server, tmp_path, capsys):
    patients = tmp_path / "patients"
    write_patient(patients / "a_positive", 60, 128, True, 21)
    write_dicom_series(all_air_volume(), patients / "b_all_air")
    write_dicom_series(rotated_phantom(60, 128, 22), patients / "c_rotated")
    write_patient(patients / "d_negative", 60, 128, False, 23)
    url = triton_server.grpc_url

    for name in ("b_all_air", "c_rotated"):
        code, document, _ = run_json(capsys, [str(patients / name), "--url", url])
        result = document["patients"][0]["result"]
        assert code == ExitCode.NOT_ASSESSABLE == 11 and document["exit_code"] == 11, name
        assert result["verdict"] == "not_assessable" and result["assessment"]["assessable"] is False, name
        reasons = result["assessment"]["reasons"]
        assert reasons and all(r["code"] and r["message"] for r in reasons), name
        assert document["summary"]["not_assessable"] == 1 and document["summary"]["failed"] == 0

    code, document, _ = run_json(capsys, ["--patients", str(patients), "--url", url, "--concurrency", "4"])
    by_name = {Path(p["input"]).name: p for p in document["patients"]}
    assert code == ExitCode.POSITIVE  # a positive patient outranks the not-assessable ones
    assert {n: p["exit_code"] for n, p in by_name.items()} == {
        "a_positive": 10, "b_all_air": 11, "c_rotated": 11, "d_negative": 0
    }
    assert document["summary"] == {
        "patients": 4, "succeeded": 4, "failed": 0, "positive": 1, "negative": 1, "not_assessable": 2
    }

    code = main([str(patients / "c_rotated"), str(patients / "d_negative"), "--url", url, "--no-progress"])
    table = capsys.readouterr().out
    assert code == ExitCode.NOT_ASSESSABLE
    row = next(line for line in table.splitlines() if "c_rotated" in line)
    reasons = by_name["c_rotated"]["result"]["assessment"]["reasons"]
    assert "NOT ASSESSABLE*" in row and row.endswith(", ".join(r["code"] for r in reasons))


def test_batch_at_concurrency_8_reports_every_input_once(triton_server, tmp_path, capsys):
    patients = tmp_path / "patients"
    volumes = {
        f"p{i:02d}": write_patient(patients / f"p{i:02d}", 30 + i, 64, i % 2 == 0, 100 + i) for i in range(11)
    }
    write_corrupt(patients / "p05_corrupt")
    listing = tmp_path / "cases.txt"
    listing.write_text("\n".join(f"patients/{name}" for name in sorted([*volumes, "p05_corrupt"])) + "\n")
    code, document, err = run_json(
        capsys, ["--list", str(listing), "--url", triton_server.grpc_url, "--concurrency", "8"]
    )
    names = [Path(p["input"]).name for p in document["patients"]]
    assert names == sorted([*volumes, "p05_corrupt"])  # every input once, in input order
    assert code == ExitCode.PARTIAL and document["exit_code"] == ExitCode.PARTIAL
    assert document["summary"]["patients"] == 12 and document["summary"]["failed"] == 1
    failed = document["patients"][names.index("p05_corrupt")]
    assert failed["status"] == "error" and failed["exit_code"] == ExitCode.BAD_INPUT
    assert failed["error"]["type"] == "PixelDecodeError"
    assert "cannot decode Pixel Data (7FE0,0010)" in failed["error"]["message"]
    assert "p05_corrupt" in err
    for entry in document["patients"]:
        name = Path(entry["input"]).name
        if name in volumes:  # each answer belongs to its own patient
            direct = submit(volumes[name], triton_server.grpc_url)
            assert entry["result"]["selected_indices"] == direct.selected_indices.tolist(), name
            assert entry["result"]["verdict"] == direct.verdict, name
            assert entry["result"]["lung_slices"] == direct.lung_slices.tolist(), name
            probabilities = direct.slice_probabilities.tolist()
            assert entry["result"]["slice_probabilities"] == pytest.approx(probabilities, abs=1e-6)
            assert entry["result"]["num_slices"] == volumes[name].num_slices


def test_error_kinds_have_their_own_exit_codes(triton_server, tmp_path, capsys):
    good = tmp_path / "good"
    write_patient(good, 60, 128, False, 12)
    corrupt = tmp_path / "corrupt"
    bad_file = write_corrupt(corrupt)
    url = triton_server.grpc_url

    code, doc, _ = run_json(capsys, [str(corrupt), "--url", url])
    assert code == ExitCode.BAD_INPUT == 2
    assert doc["patients"][0]["error"]["message"].startswith(str(bad_file))

    code, doc, _ = run_json(capsys, [str(good), "--url", url, "--timeout", "0.001"])
    assert code == ExitCode.DEADLINE == 4
    assert "deadline of 0.001 s exceeded" in doc["patients"][0]["error"]["message"]
    assert "may have reached the server and run; it was not re-sent" in doc["patients"][0]["error"]["message"]

    http_port = triton_server.http_url.rsplit(":", 1)[1]
    code, doc, _ = run_json(capsys, [str(good), "--url", f"localhost:{http_port}", "--retries", "0"])
    assert code == ExitCode.SERVER_UNAVAILABLE == 3
    assert "closed the connection: not a Triton gRPC endpoint (wrong port?" in doc["patients"][0]["error"]["message"]

    code, doc, _ = run_json(capsys, [str(good), "--url", url, "--model", "no_such_model"])
    assert code == ExitCode.MODEL_NOT_READY == 6
    assert "model 'no_such_model' is not served at" in doc["patients"][0]["error"]["message"]
    assert "covid_ct_pipeline" in doc["patients"][0]["error"]["message"]  # lists what is served

    code, doc, _ = run_json(capsys, [str(good), "--url", url, "--ssl", "--retries", "0"])
    assert code == ExitCode.TLS == 5
    assert f"TLS handshake with {url} failed" in doc["patients"][0]["error"]["message"]

    code, doc, _ = run_json(capsys, [str(good), "--url", url, "--root-cert", str(tmp_path / "missing.pem")])
    assert code == ExitCode.TLS
    assert "TLS root certificate" in doc["patients"][0]["error"]["message"]


@pytest.mark.real_data
def test_real_jpeg_lossless_series_through_the_cli(triton_server, real_data_dir, capsys):
    from covidct.preprocessing.io.series_reader import read_series

    series = real_data_dir / "P002"
    code, document, _ = run_json(capsys, [str(series), "--url", triton_server.grpc_url])
    result = document["patients"][0]["result"]
    assert code == {"negative": 0, "positive": 10, "not_assessable": 11}[result["verdict"]]
    assert result["assessment"]["assessable"] == (result["verdict"] != "not_assessable")
    volume = read_series(series)
    assert result["num_slices"] == volume.num_slices
    assert result["slice_positions_mm"] == pytest.approx(volume.positions_mm[result["selected_indices"]].tolist())
