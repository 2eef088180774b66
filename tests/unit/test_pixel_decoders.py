"""The pixel decoder choice: every available decoder gives the same HU, the plugin that
decoded each slice is recorded, a decoder that cannot handle a transfer syntax hands it
on, and unknown or unavailable names are refused."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from covidct.errors import ConfigError, PixelDecodeError
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.dicom_decode import decode_series, decode_series_recorded, decode_slice, tasks_for_slices
from covidct.preprocessing.io.dicom_series import scan_dicom
from covidct.preprocessing.io.pixel_decoders import (
    DECODER_CHOICES,
    NVIMGCODEC_LABEL,
    PREFERENCE,
    cuda_device_count,
    decoder_status,
    decoder_statuses,
    plugin_labels,
    resolve_decoder_order,
)
from tests.unit.dicom_factory import write_ct_series

REAL_SERIES = ("P002", "cap002", "normal002")


def _needs(name: str) -> None:
    status = decoder_status(name)
    if not status.available:
        pytest.skip(f"pixel decoder {name} unavailable here: {status.detail}")


def _decoder_param(name: str):
    return pytest.param(name, marks=pytest.mark.gpu, id=name) if name == "nvimgcodec" else pytest.param(name, id=name)


DECODERS = [_decoder_param(name) for name in PREFERENCE]


def to_jpeg_lossless(path) -> None:
    """Rewrite an uncompressed DICOM file as JPEG Lossless SV1 with GDCM (pydicom has no
    JPEG Lossless encoder)."""
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change(), path
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), path


def _write(folder, syntax, num_slices=4, seed=0, **kwargs):
    """A 48 x 40 series of ``num_slices`` slices in transfer syntax ``syntax``."""
    shape = {"num_slices": num_slices, "rows": 48, "cols": 40, "seed": seed, **kwargs}
    if syntax == JPEGLosslessSV1:
        written = write_ct_series(folder, **shape)
        for path in written.paths:
            to_jpeg_lossless(path)
    else:
        compress = None if syntax == ExplicitVRLittleEndian else syntax
        written = write_ct_series(folder, transfer_syntax=compress, **shape)
    assert pydicom.dcmread(written.paths[0]).file_meta.TransferSyntaxUID == syntax
    return written


def _tasks(folder):
    return tasks_for_slices(scan_dicom(folder, ReaderConfig()).slices)


SYNTAXES = {
    "uncompressed": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """One small series per transfer syntax: ``{id: (folder, WrittenSeries)}``."""
    root = tmp_path_factory.mktemp("syntaxes")
    return {key: (root / key, _write(root / key, syntax, seed=i)) for i, (key, syntax) in enumerate(SYNTAXES.items())}


# ---------------------------------------------------------------------------- the setting
@pytest.mark.parametrize("name", ["fastest", "GDCM", "", "pydicom"])
def test_unknown_decoder_name_is_refused(tmp_path, name):
    expected = rf"pixel decoder '{name}' is unknown; expected one of auto, nvimgcodec, gdcm, pylibjpeg"
    with pytest.raises(ConfigError, match=expected):
        resolve_decoder_order(name)
    write_ct_series(tmp_path, num_slices=2, rows=32, cols=32)
    with pytest.raises(ConfigError, match=expected):
        decode_series(_tasks(tmp_path), decoder=name)


def test_unavailable_decoder_is_refused_with_the_reason():
    unavailable = [s for s in decoder_statuses() if not s.available]
    if not unavailable:
        pytest.skip("every pixel decoder is available here")
    status = unavailable[0]
    with pytest.raises(ConfigError, match=rf"pixel decoder '{status.name}' is unavailable here: .*or 'auto'"):
        resolve_decoder_order(status.name)


def test_nvimgcodec_is_available_only_with_a_cuda_device():
    status = decoder_status("nvimgcodec")
    devices, why = cuda_device_count()
    try:
        installed = importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except ModuleNotFoundError:
        installed = False
    if not installed:
        assert not status.available and "nvidia-nvimgcodec-cu12 is not installed" in status.detail
    elif devices == 0:
        assert not status.available and why in status.detail
    else:
        assert status.available, status.detail


def test_auto_is_the_available_decoders_in_preference_order():
    available = [s.name for s in decoder_statuses() if s.available]
    assert DECODER_CHOICES == ("auto", "nvimgcodec", "gdcm", "pylibjpeg")
    assert "pylibjpeg" in available  # a dependency of the bundle
    assert resolve_decoder_order("auto") == tuple(n for n in ("nvimgcodec", "gdcm", "pylibjpeg") if n in available)
    for name in available:  # a named decoder goes first, the other available ones follow
        order = resolve_decoder_order(name)
        assert order[0] == name and sorted(order) == sorted(available)


def test_plugin_labels_put_the_order_first_then_the_rest_of_pydicom():
    assert plugin_labels(("gdcm", "pylibjpeg"), ("pylibjpeg", "gdcm")) == ("pylibjpeg", "gdcm")
    # RLE: pydicom offers no gdcm plugin; its own decoder comes after pylibjpeg
    assert plugin_labels(("pydicom", "pylibjpeg"), ("gdcm", "pylibjpeg")) == ("pylibjpeg", "pydicom")
    assert plugin_labels(("gdcm", "pyjpegls"), ("pylibjpeg",)) == ("gdcm", "pyjpegls")
    assert plugin_labels(("gdcm", NVIMGCODEC_LABEL, "pylibjpeg"), ("nvimgcodec", "gdcm")) == (
        NVIMGCODEC_LABEL, "gdcm", "pylibjpeg")


# -------------------------------------------------------------------------- exactness
#: The decoder that must decode each syntax for each choice (gdcm has no pydicom RLE
#: plugin; pixel data that is not encapsulated runs no plugin).
EXPECTED_DECODER = {
    ("uncompressed", "gdcm"): "native", ("uncompressed", "pylibjpeg"): "native",
    ("uncompressed", "nvimgcodec"): "native",
    ("rle", "gdcm"): "pylibjpeg", ("rle", "pylibjpeg"): "pylibjpeg", ("rle", "nvimgcodec"): "pylibjpeg",
    ("jpeg-lossless", "gdcm"): "gdcm", ("jpeg-lossless", "pylibjpeg"): "pylibjpeg",
    ("jpeg-lossless", "nvimgcodec"): "nvimgcodec",
    ("jpeg2000", "gdcm"): "gdcm", ("jpeg2000", "pylibjpeg"): "pylibjpeg", ("jpeg2000", "nvimgcodec"): "nvimgcodec",
}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("key", list(SYNTAXES))
def test_every_decoder_gives_the_written_hu(series, key, decoder):
    _needs(decoder)
    folder, written = series[key]
    result = decode_series_recorded(_tasks(folder), decoder=decoder)
    np.testing.assert_array_equal(result.hu, written.hu)
    assert result.hu.dtype == np.int16 and result.hu.shape == written.hu.shape
    assert len(result.decoders) == len(written.paths)
    if (key, decoder) in EXPECTED_DECODER:
        assert result.decoders_used == (EXPECTED_DECODER[key, decoder],)
    else:  # JPEG-LS: whichever of gdcm, pylibjpeg, pyjpegls comes first here
        assert len(result.decoders_used) == 1 and result.decoders_used[0] in ("gdcm", "pylibjpeg", "pyjpegls")


@pytest.mark.parametrize("key", list(SYNTAXES))
def test_all_available_decoders_agree(series, key):
    folder, _ = series[key]
    available = [s.name for s in decoder_statuses() if s.available]
    results = {name: decode_series(_tasks(folder), decoder=name) for name in available}
    first = results[available[0]]
    for name in available[1:]:
        np.testing.assert_array_equal(results[name], first, err_msg=f"{name} vs {available[0]} on {key}")


def test_decode_slice_takes_the_choice(series):
    _needs("gdcm")
    folder, written = series["jpeg-lossless"]
    task = _tasks(folder)[1]
    np.testing.assert_array_equal(decode_slice(task, decoder="gdcm"), written.hu[1])
    np.testing.assert_array_equal(decode_slice(task, decoder="pylibjpeg"), written.hu[1])


def test_the_choice_and_its_record_reach_the_pool_workers(tmp_path):
    _needs("gdcm")
    written = _write(tmp_path / "s", JPEGLosslessSV1, num_slices=8)
    tasks = _tasks(tmp_path / "s")
    for name in ("gdcm", "pylibjpeg"):
        result = decode_series_recorded(tasks, workers=2, decoder=name)
        np.testing.assert_array_equal(result.hu, written.hu)
        assert result.decoders == (name,) * 8


def test_each_slice_records_its_own_decoder(tmp_path):
    """A series mixing JPEG Lossless and RLE slices: GDCM decodes the JPEG ones and hands
    RLE (no GDCM plugin in pydicom) on to pylibjpeg, slice by slice."""
    _needs("gdcm")
    jpeg = _write(tmp_path / "s", JPEGLosslessSV1, num_slices=4)
    rle = _write(tmp_path / "rle", RLELossless, num_slices=4, seed=1, series_uid=jpeg.series_uid)
    for i in (1, 3):  # paths are in position order: swap in RLE files at positions 1 and 3
        jpeg.paths[i].write_bytes(rle.paths[i].read_bytes())
    tasks = tasks_for_slices(scan_dicom(tmp_path / "s", ReaderConfig()).slices)
    result = decode_series_recorded(tasks, decoder="gdcm")
    assert result.decoders == ("gdcm", "pylibjpeg", "gdcm", "pylibjpeg")
    assert result.decoders_used == ("gdcm", "pylibjpeg")
    np.testing.assert_array_equal(result.hu[[0, 2]], jpeg.hu[[0, 2]])
    np.testing.assert_array_equal(result.hu[[1, 3]], rle.hu[[1, 3]])


def test_undecodable_slice_names_every_plugin_tried(tmp_path):
    _needs("gdcm")
    written = _write(tmp_path / "s", JPEGLosslessSV1, num_slices=3)
    data = bytearray(written.paths[1].read_bytes())
    soi = data.index(b"\xff\xd8\xff")  # start of the JPEG stream of the only fragment
    data[soi : soi + 2] = b"\x00\x00"
    written.paths[1].write_bytes(bytes(data))
    expected = (r"IM0002\.dcm: cannot decode Pixel Data \(7FE0,0010\) \(JPEG Lossless.*\) with any plugin "
                r"\(gdcm: .*; pylibjpeg: .*SOI marker missing.*\); expected complete, decodable pixel data")
    with pytest.raises(PixelDecodeError, match=expected):
        decode_series(_tasks(tmp_path / "s"), decoder="gdcm")


# ------------------------------------------------------------------------- real series
@pytest.mark.real_data
@pytest.mark.parametrize("name", REAL_SERIES)
def test_gdcm_and_pylibjpeg_bit_identical_on_real_series(real_data_dir, name):
    _needs("gdcm")
    tasks = _tasks(real_data_dir / name)
    gdcm = decode_series_recorded(tasks, decoder="gdcm")
    pylibjpeg = decode_series_recorded(tasks, decoder="pylibjpeg")
    assert gdcm.decoders_used == ("gdcm",) and pylibjpeg.decoders_used == ("pylibjpeg",)
    assert gdcm.hu.shape == (len(tasks), 512, 512)
    np.testing.assert_array_equal(gdcm.hu, pylibjpeg.hu)
    assert int(gdcm.hu.min()) == -1024 and int(gdcm.hu.max()) > 1000  # air outside the FOV, bone


# --------------------------------------------------------------------------- benchmark
def test_decode_benchmark_reports_every_available_decoder(series, tmp_path):
    from covidct.benchmarks.bench_decode import main

    folder, _ = series["jpeg-lossless"]
    result = main(["--series", str(folder), "--out", str(tmp_path / "out"), "--repeats", "1", "--no-pin"])
    available = [s.name for s in decoder_statuses() if s.available]
    rows = result["series"][0]["rows"]
    assert [r["decoder"] for r in rows] == ["read only (no decode)", *available]
    for row in rows[1:]:
        assert row["decoded_by"] == [row["decoder"]] and row["hu_identical_to_reference"] is True
        assert row["ms_per_slice_cpu"] > 0
    saved = json.loads((tmp_path / "out" / "decode.json").read_text(encoding="utf-8"))
    assert saved["series"][0]["transfer_syntax"] == "JPEGLosslessSV1"
    assert [d["name"] for d in saved["decoders"]] == ["nvimgcodec", "gdcm", "pylibjpeg"]
    report = (tmp_path / "out" / "decode.md").read_text(encoding="utf-8")
    for status in decoder_statuses():
        assert f"`{status.name}`: {'available' if status.available else 'unavailable'}" in report
