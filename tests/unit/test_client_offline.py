"""Client pieces that need no Triton server: parsing of the ensemble's output tensors
(real numpy arrays under the names of ``covidct.serving.tensors``), transport settings,
TLS file checks, exit codes, the report and its JSON schema, the table, the overlays,
the CLI's argument and input errors, and a server that is down (a free port with nothing
listening: real gRPC, no mock)."""

from __future__ import annotations

import dataclasses

import json
import socket

import jsonschema
import numpy as np
import pytest

from covidct.client.answer import DEMO_WARNING, model_summary
from covidct.client.batch import ExitCode, PatientOutcome, batch_exit_code, exit_code_of
from covidct.client.cli import build_parser, collect_inputs, main
from covidct.client.overlay import overlay_slices, slice_masks, write_overlays
from covidct.client.report import format_table, report_dict, validate_report
from covidct.client.result import PipelineResult, Timings, parse_arrays
from covidct.client.submit import PipelineClient, request_arrays, submit
from covidct.client.transport import TransportConfig, connect, is_local_url
from covidct.errors import (
    ClientError,
    DeadlineExceededError,
    InferenceFailedError,
    InputError,
    ModelNotReadyError,
    PixelDecodeError,
    ServerUnavailableError,
    TLSConfigError,
)
from covidct.serving import tensors as tn
from covidct.preprocessing.synthetic.phantom import make_phantom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def card(network: str, task: str, *, demo: bool, warning: str | None = None) -> dict:
    return {
        "network": network,
        "task": task,
        "demo": demo,
        "warning": warning,
        "training_data": {"source_kind": "phantom" if demo else "dicom-csv", "synthetic": demo},
        "intended_use": "testing",
    }


DEMO_CARDS = {
    "classifier": card("cnn6", "classification", demo=True, warning=DEMO_WARNING),
    "segmenter": card("unet", "segmentation", demo=True, warning=DEMO_WARNING),
}
REAL_CARDS = {
    "classifier": card("cnn6", "classification", demo=False),
    "segmenter": card("unet", "segmentation", demo=False),
}


def json_tensor(value) -> np.ndarray:
    """A BYTES [1] tensor as tritonclient returns it: an object array of bytes."""
    return np.array([json.dumps(value).encode("utf-8")], dtype=np.object_)


def ensemble_arrays(verdict: int = 1, *, num_slices: int = 10, cards=DEMO_CARDS, m: int = 4) -> dict[str, np.ndarray]:
    """Every output of the ensemble for a volume of ``num_slices`` slices, as real arrays."""
    assessable = verdict != tn.VERDICT_NOT_ASSESSABLE
    reasons = [] if assessable else [
        {"code": "no_lungs", "message": "lung volume 0 ml < 100 ml"},
        {"code": "orientation", "message": "spine not posterior"},
    ]
    lung_slices = np.array([2, 3, 4, 5], np.int32) if assessable else np.zeros(0, np.int32)
    lung = np.zeros((lung_slices.size, m, m), np.uint8)
    lung[:, 1:3, 0:2], lung[:, 1:3, 2:4] = 1, 2
    infection = np.zeros_like(lung)
    infection[:, 1, 1] = 1
    selected = np.array([3, 4], np.int32) if assessable else np.zeros(0, np.int32)
    return {
        tn.VERDICT: np.array([verdict], np.int32),
        tn.ASSESSMENT: json_tensor({"assessable": assessable, "reasons": reasons,
                                   "measurements": {"lung_volume_ml": 4200.0 if assessable else 0.0, "air_hu": None}}),
        tn.POSITIVE_FRACTION: np.array([0.5 * (verdict == 1)], np.float32),
        tn.VOTE_THRESHOLD: np.array([0.3], np.float32),
        tn.SLICE_PROBABILITIES: np.array([0.2, 0.9], np.float32)[: selected.size],
        tn.SELECTED_INDICES: selected,
        tn.LUNG_SLICES: lung_slices,
        tn.LUNG_MASK: lung,
        tn.INFECTION_MASK: infection,
        tn.MASK_SPACING_MM: np.array([2.0, 4.0, 4.0], np.float32),
        tn.LESION_BURDEN_PCT: np.array([1.5], np.float32),
        tn.LUNG_VOLUME_ML: np.array([4200.0 if assessable else 0.0], np.float32),
        tn.MODEL_VERSIONS: np.array([b"classifier=cnn6:1:sha256:ab", b"segmenter=unet:1:sha256:cd"], np.object_),
        tn.MODEL_CARD: json_tensor(cards),
    }


def fake_result(verdict: int, cards=DEMO_CARDS) -> PipelineResult:
    return parse_arrays(
        ensemble_arrays(verdict, cards=cards),
        0.4,
        positions_mm=np.arange(10) * 2.0,
        num_slices=10,
        timings=Timings(read_s=0.1, prepare_s=0.01, round_trip_s=0.4, total_s=0.52),
    )


def test_parse_arrays_reads_every_output():
    result = fake_result(1)
    assert (result.verdict, result.verdict_code, result.positive, result.assessable) == ("positive", 1, True, True)
    np.testing.assert_array_equal(result.selected_indices, [3, 4])
    np.testing.assert_array_equal(result.slice_positions_mm, [6.0, 8.0])
    np.testing.assert_array_equal(result.lung_slices, [2, 3, 4, 5])
    assert result.lung_mask.shape == result.infection_mask.shape == (4, 4, 4)
    assert result.lung_mask.dtype == np.uint8 and set(np.unique(result.lung_mask)) == {0, 1, 2}
    assert result.mask_spacing_mm == (2.0, 4.0, 4.0)
    assert result.model_versions == ("classifier=cnn6:1:sha256:ab", "segmenter=unet:1:sha256:cd")
    assert result.assessment.measurements["lung_volume_ml"] == 4200.0
    assert np.isnan(result.assessment.measurements["air_hu"])
    assert result.demo and result.demo_warning == DEMO_WARNING
    assert model_summary(result.model_card) == (
        "classifier cnn6 (phantom, synthetic, demo); segmenter unet (phantom, synthetic, demo)"
    )
    negative = fake_result(0, REAL_CARDS)
    assert (negative.verdict, negative.positive, negative.demo) == ("negative", False, False)
    assert negative.demo_warning is None
    assert model_summary({}) == "no model card"


def test_parse_arrays_not_assessable_has_reasons_and_no_masks():
    result = fake_result(-1)
    assert (result.verdict, result.verdict_code, result.positive, result.assessable) == (
        "not_assessable", -1, False, False
    )
    assert result.reason_codes == ("no_lungs", "orientation")
    assert result.assessment.reasons[0].message == "lung volume 0 ml < 100 ml"
    assert result.lung_slices.size == 0 and result.lung_mask.shape[0] == 0
    flat = ensemble_arrays(-1)
    flat[tn.LUNG_MASK] = flat[tn.INFECTION_MASK] = np.zeros(0, np.uint8)  # [0] instead of [0, m, m]
    assert parse_arrays(flat, 0.1).lung_mask.shape == (0, 0, 0)


def with_(name: str, value, verdict: int = 1) -> dict[str, np.ndarray]:
    arrays = ensemble_arrays(verdict)
    arrays[name] = value
    return arrays


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({k: v for k, v in ensemble_arrays().items() if k != tn.MODEL_CARD}, r"has no output tensor MODEL_CARD"),
        (with_(tn.ASSESSMENT, np.array([b"{not json"], np.object_)), r"ASSESSMENT is not valid UTF-8 JSON"),
        (with_(tn.ASSESSMENT, np.array([b"\xff\xfe"], np.object_)), r"ASSESSMENT is not valid UTF-8 JSON"),
        (with_(tn.ASSESSMENT, json_tensor([1, 2])), r"ASSESSMENT is malformed: expected a JSON object, got list"),
        (with_(tn.ASSESSMENT, json_tensor({"assessable": "yes"})), r"ASSESSMENT is malformed: 'assessable' is 'yes'"),
        (with_(tn.ASSESSMENT, json_tensor({"assessable": False, "reasons": []}), -1),
         r"ASSESSMENT is malformed: not assessable without any reason"),
        (with_(tn.ASSESSMENT, json_tensor({"assessable": False, "reasons": [{"code": 3}]}), -1),
         r"ASSESSMENT is malformed: reasons\[0\] is \{'code': 3\}"),
        (with_(tn.ASSESSMENT, json_tensor({"assessable": True, "measurements": {"x": "big"}})),
         r"measurement 'x' is 'big'; expected a number or null"),
        (with_(tn.ASSESSMENT, json_tensor({"assessable": True, "reasons": []}), -1),
         r"VERDICT is -1 \(not_assessable\) but ASSESSMENT says assessable=True"),
        (with_(tn.VERDICT, np.array([7], np.int32)), r"VERDICT is 7; expected one of \[-1, 0, 1\]"),
        (with_(tn.VERDICT, np.array([1, 0], np.int32)), r"VERDICT has shape \[2\]; expected \[1\]"),
        (with_(tn.MODEL_CARD, json_tensor({"classifier": "cnn6"})),
         r"MODEL_CARD is malformed: card 'classifier' is str"),
        (with_(tn.MODEL_CARD, json_tensor({"classifier": {"network": "cnn6"}})),
         r"MODEL_CARD is malformed: card 'classifier' lacks task, demo, training_data, intended_use"),
        (with_(tn.MODEL_CARD, json_tensor({"c": {**REAL_CARDS["classifier"], "training_data": {}}})),
         r"MODEL_CARD is malformed: card 'c': 'training_data' is \{\}"),
        (with_(tn.LUNG_MASK, np.zeros((3, 4, 4), np.uint8)), r"LUNG_MASK has shape \[3, 4, 4\]; expected \[4, m, m\]"),
        (with_(tn.LUNG_MASK, np.zeros((4, 16), np.uint8)), r"LUNG_MASK has shape \[4, 16\]; expected \[4, m, m\]"),
        (with_(tn.INFECTION_MASK, np.zeros((4, 8, 8), np.uint8)),
         r"INFECTION_MASK has shape \[4, 8, 8\]; expected the shape of LUNG_MASK \[4, 4, 4\]"),
        (with_(tn.LUNG_SLICES, np.array([2, 3, 4, 10], np.int32)), r"LUNG_SLICES 2\.\.10 outside the 10 slices sent"),
        (with_(tn.SELECTED_INDICES, np.array([3, -1], np.int32)), r"SELECTED_INDICES -1\.\.3 outside the 10 slices"),
        (with_(tn.SLICE_PROBABILITIES, np.array([0.5], np.float32)),
         r"SLICE_PROBABILITIES has 1 values; expected one per entry of SELECTED_INDICES \(2\)"),
        (with_(tn.MASK_SPACING_MM, np.array([1.0, 1.0], np.float32)), r"MASK_SPACING_MM has 2 values; expected 3"),
    ],
)
def test_parse_arrays_rejects_malformed_outputs_naming_the_tensor(arrays, message):
    with pytest.raises(InferenceFailedError, match=rf"^req 7: .*{message}"):
        parse_arrays(arrays, 0.1, num_slices=10, context="req 7")


def test_request_carries_hu_and_spacing_only():
    volume = make_phantom(4, size=32, covid=False, seed=1).volume
    arrays = request_arrays(volume)
    assert tuple(arrays) == tn.ENSEMBLE_INPUTS
    assert arrays[tn.HU_VOLUME].dtype == np.int16 and arrays[tn.SPACING_MM].dtype == np.float32


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
    assert exit_code_of(InferenceFailedError("x")) == ExitCode.INFERENCE_FAILED
    assert exit_code_of(RuntimeError("x")) == ExitCode.INTERNAL
    negative, positive = PatientOutcome("a", fake_result(0)), PatientOutcome("b", fake_result(1))
    unassessable = PatientOutcome("u", fake_result(-1))
    bad = PatientOutcome.failed("c", PixelDecodeError("broken"))
    assert (negative.exit_code, positive.exit_code, unassessable.exit_code) == (0, 10, 11)
    assert ExitCode.NOT_ASSESSABLE == 11
    assert batch_exit_code([negative]) == ExitCode.NEGATIVE
    assert batch_exit_code([negative, positive]) == ExitCode.POSITIVE
    assert batch_exit_code([unassessable]) == ExitCode.NOT_ASSESSABLE
    assert batch_exit_code([negative, unassessable]) == ExitCode.NOT_ASSESSABLE
    assert batch_exit_code([unassessable, positive]) == ExitCode.POSITIVE
    assert batch_exit_code([bad]) == ExitCode.BAD_INPUT
    assert batch_exit_code([negative, bad]) == ExitCode.PARTIAL
    assert batch_exit_code([unassessable, bad]) == ExitCode.PARTIAL


def test_report_matches_schema_and_lists_every_input():
    outcomes = [
        PatientOutcome("a", fake_result(0)),
        PatientOutcome.failed("b", PixelDecodeError("b/IM0001.dcm: cannot decode")),
        PatientOutcome("c", fake_result(1, REAL_CARDS)),
        PatientOutcome("d", fake_result(-1)),
    ]
    document = report_dict(outcomes, url="localhost:8001", model="covid_ct_pipeline")
    validate_report(json.loads(json.dumps(document)))
    assert document["report_version"] == 3
    assert [p["input"] for p in document["patients"]] == ["a", "b", "c", "d"]
    assert [p["exit_code"] for p in document["patients"]] == [0, 2, 10, 11]
    assert document["patients"][1]["error"] == {"type": "PixelDecodeError", "message": "b/IM0001.dcm: cannot decode"}
    assert document["summary"] == {
        "patients": 4, "succeeded": 3, "failed": 1, "positive": 1, "negative": 1, "not_assessable": 1
    }
    assert document["exit_code"] == ExitCode.PARTIAL
    negative, positive, unassessable = (document["patients"][i]["result"] for i in (0, 2, 3))
    verdicts = (negative["verdict"], positive["verdict"], unassessable["verdict"])
    assert verdicts == ("negative", "positive", "not_assessable")
    assert unassessable["assessment"]["reasons"][0] == {"code": "no_lungs", "message": "lung volume 0 ml < 100 ml"}
    assert unassessable["assessment"]["measurements"] == {"lung_volume_ml": 0.0, "air_hu": None}
    assert (negative["demo"], negative["demo_warning"]) == (True, DEMO_WARNING)
    assert (positive["demo"], positive["demo_warning"]) == (False, None)
    assert positive["model_card"] == REAL_CARDS and positive["lung_slices"] == [2, 3, 4, 5]
    assert "lung_mask" not in positive and "infection_mask" not in positive  # masks stay out of the JSON

    for field, value, message in [
        ("verdict", 1, r"1 is not one of \['positive', 'negative', 'not_assessable'\]"),
        ("demo_warning", None, r"None is not of type 'string'"),
        ("assessment", {"assessable": True, "reasons": [{"code": "x"}], "warnings": [], "measurements": {}},
         r"'message' is a required property"),
        ("assessment", {"assessable": True, "reasons": [], "measurements": {}},
         r"'warnings' is a required property"),
    ]:
        broken = json.loads(json.dumps(document))
        broken["patients"][0]["result"][field] = value
        with pytest.raises(jsonschema.ValidationError, match=message):
            validate_report(broken)


def test_table_marks_demo_answers_and_lists_reasons():
    outcomes = [
        PatientOutcome("pos", fake_result(1)),
        PatientOutcome("neg", fake_result(0)),
        PatientOutcome("odd", fake_result(-1)),
        PatientOutcome.failed("bad", PixelDecodeError("bad/IM1.dcm: cannot decode")),
    ]
    lines = format_table(outcomes).splitlines()
    rows = {line.split()[0]: line for line in lines[2:6]}
    assert rows["pos"].split()[1] == "POSITIVE*" and rows["neg"].split()[1] == "negative*"
    assert "NOT ASSESSABLE*" in rows["odd"] and rows["odd"].endswith("no_lungs, orientation")
    assert "ERROR" in rows["bad"] and "[exit 2] PixelDecodeError" in rows["bad"]
    assert lines[6] == "4 patients: 1 positive, 1 negative, 1 not assessable, 1 failed"
    assert lines[7] == "models: classifier cnn6 (phantom, synthetic, demo); segmenter unet (phantom, synthetic, demo)"
    assert lines[8] == f"* {DEMO_WARNING}"
    real = format_table([PatientOutcome("pos", fake_result(1, REAL_CARDS))]).splitlines()
    assert real[2].split()[1] == "POSITIVE" and not any(line.startswith("*") for line in real)
    assert real[-1] == "models: classifier cnn6 (dicom-csv); segmenter unet (dicom-csv)"


def test_table_notes_the_card_warning_of_models_trained_on_real_data():
    warned = {
        "classifier": card("efficientnet_lite0", "classification", demo=False, warning="Research model A; no use."),
        "segmenter": card("unet_lite0", "segmentation", demo=False, warning="Research model B; not clinical."),
    }
    lines = format_table([PatientOutcome("a", fake_result(1, warned)), PatientOutcome("b", fake_result(0, warned))])
    notes = [line for line in lines.splitlines() if line.startswith("note: ")]
    assert notes == ["note: Research model A; no use.", "note: Research model B; not clinical."]
    assert not any(line.startswith("*") for line in lines.splitlines())


def test_table_and_report_show_warnings_and_which_series_was_read():
    from covidct.client.answer import Reason

    base = fake_result(0, REAL_CARDS)
    clipped = dataclasses.replace(
        base,
        assessment=dataclasses.replace(base.assessment, warnings=(Reason("partial_coverage", "0.2 % outside"),)),
        source_series="series 2 'chest 1 mm' [abc]: 300 slices, slice thickness 1 mm, chosen by rule 'most_slices'",
        series_left_out=("series 3 'chest 5 mm' [def]: 60 slices",),
    )
    lines = format_table([PatientOutcome("clip", clipped)]).splitlines()
    assert lines[2].split()[1] == "negative" and lines[2].endswith("warning: partial_coverage")
    counts = lines.index("1 patients: 0 positive, 1 negative, 0 not assessable, 0 failed")
    assert lines[counts + 2] == ("clip: read series 2 'chest 1 mm' [abc]: 300 slices, slice thickness 1 mm, chosen by "
                                 "rule 'most_slices'; left out: series 3 'chest 5 mm' [def]: 60 slices")
    document = report_dict([PatientOutcome("clip", clipped)], url="localhost:8001", model="covid_ct_pipeline")
    validate_report(json.loads(json.dumps(document)))
    result = document["patients"][0]["result"]
    assert result["assessment"]["warnings"] == [{"code": "partial_coverage", "message": "0.2 % outside"}]
    assert result["series"].startswith("series 2")
    assert result["series_left_out"] == ["series 3 'chest 5 mm' [def]: 60 slices"]


def test_server_masks_are_upsampled_nearest_to_the_slice():
    result = fake_result(1)
    lung, infection = slice_masks(result, 3, (8, 12))
    expected = np.repeat(np.repeat(result.lung_mask[1], 2, axis=0), 3, axis=1)
    np.testing.assert_array_equal(lung, expected)
    assert infection.dtype == bool and infection.sum() == 2 * 3 and infection[2:4, 3:6].all()
    assert slice_masks(result, 0, (8, 12)) is None  # slice 0 holds no lung: no mask


def test_overlays_draw_selected_or_lung_slices(tmp_path):
    volume = make_phantom(10, size=32, covid=True, seed=3).volume
    result = fake_result(1)
    assert overlay_slices(result, 1) == [(4, pytest.approx(0.9))]
    paths = write_overlays(volume, result, tmp_path / "pos", name="p")
    assert [p.name for p in paths] == ["p_z0003.png", "p_z0004.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    unassessable = parse_arrays({**ensemble_arrays(-1), tn.LUNG_SLICES: np.array([1, 5, 9], np.int32),
                                 tn.LUNG_MASK: np.ones((3, 4, 4), np.uint8),
                                 tn.INFECTION_MASK: np.zeros((3, 4, 4), np.uint8)}, 0.1, num_slices=10)
    assert [i for i, _ in overlay_slices(unassessable, 2)] == [1, 9]
    paths = write_overlays(volume, unassessable, tmp_path / "odd", name="u")
    assert [p.name for p in paths] == ["u_z0001.png", "u_z0005.png", "u_z0009.png"]
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(ClientError, match=r"overlay folder .*blocker/sub: cannot be created \(Not a directory\)"):
        write_overlays(volume, result, tmp_path / "blocker" / "sub")


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
    epilog = build_parser().epilog
    for code in ("0 every patient negative", "10 at least one positive", "11 at least one series not assessable",
                 "8 several patients and some failed"):
        assert code in epilog


def test_server_down_gives_server_unavailable_after_retries(tmp_path, capsys):
    url = f"127.0.0.1:{free_port()}"
    volume = make_phantom(4, size=64, covid=False, seed=1).volume
    transport = TransportConfig(retries=1, backoff_s=0.05, connect_timeout_s=2)
    with pytest.raises(ServerUnavailableError, match=rf"no server answers at {url} \(is Triton running\?\)"):
        submit(volume, url, transport=transport)
    with PipelineClient(url, transport=transport) as client, \
            pytest.raises(ServerUnavailableError, match=r"readiness check"):
        client.wait_ready()
    code = main([str(tmp_path), "--url", url, "--retries", "0", "--json"])
    assert code == ExitCode.SERVER_UNAVAILABLE
    document = json.loads(capsys.readouterr().out)
    validate_report(document)
    assert document["patients"][0]["error"]["type"] == "ServerUnavailableError"
