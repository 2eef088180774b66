"""Choose pydicom 3's decoding plugin for DICOM pixel data, and record which one decoded.

Three decoders are known by name, in this order of preference for ``decoder="auto"``:

``nvimgcodec``
    NVIDIA nvImageCodec's pydicom plugin (package ``nvidia-nvimgcodec-cu12``, module
    ``nvidia.nvimgcodec.tools.dicom.pydicom_plugin``; JPEG Baseline, JPEG Lossless,
    JPEG 2000, HTJ2K) decoding on a CUDA GPU. Usable only where the package imports
    AND the CUDA driver reports at least one visible device; it is not a dependency of
    the bundle. Its plugin is added to pydicom's decoders (under nvImageCodec's own label
    :data:`NVIMGCODEC_LABEL`) the first time a process decodes with it; pydicom's default
    plugin order is left as it is.
``gdcm``
    GDCM (package ``python-gdcm``), pydicom's ``gdcm`` plugin: JPEG, JPEG-LS, JPEG 2000.
``pylibjpeg``
    pylibjpeg with its libjpeg, openjpeg and RLE plugins: JPEG, JPEG 2000, HTJ2K, RLE.

A choice is an order, not a single plugin: for every slice the decoders of the order
that pydicom offers for that slice's transfer syntax are tried first, in order, then
every other plugin pydicom has available for the syntax (e.g. pydicom's own RLE
decoder, pyjpegls for JPEG-LS). Each try names its plugin through pydicom's
``decoding_plugin`` option, so the plugin that decoded a slice is known exactly. A
named decoder (``"gdcm"``, ...) goes first and the other available ones follow; an
unavailable named decoder is a :class:`~covidct.errors.ConfigError`. A plugin that
raises an ``Exception`` hands the slice to the next one, as pydicom does when no plugin
is named (the record shows it); a Rust plugin's panic (a ``BaseException``) ends the
decode, as in pydicom. Pixel data that is not encapsulated (uncompressed, deflated) runs
no plugin; it is recorded as :data:`NATIVE`.

Checking for a CUDA device initialises the CUDA driver in the calling process; CUDA
does not survive ``fork``, so a process pool that decodes with ``nvimgcodec`` must start
its workers another way (:func:`needs_fresh_workers`).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from covidct.errors import ConfigError, PixelDecodeError
from covidct.preprocessing.reader_config import PIXEL_DECODERS
from covidct.preprocessing.io.dicom_scan import PIXEL_DATA_TAG

#: Values a ``decoder`` setting accepts; after ``"auto"``, the named decoders, most
#: preferred first (the order of ``decoder="auto"``). Defined with ``ReaderConfig``.
DECODER_CHOICES = PIXEL_DECODERS
AUTO, NVIMGCODEC, GDCM, PYLIBJPEG = DECODER_CHOICES
PREFERENCE = (NVIMGCODEC, GDCM, PYLIBJPEG)
#: Recorded for pixel data that is not encapsulated: pydicom reads it without a plugin.
NATIVE = "native"
#: nvImageCodec's pydicom plugin module and the label it registers its plugin under.
NVIMGCODEC_PLUGIN_MODULE = "nvidia.nvimgcodec.tools.dicom.pydicom_plugin"
NVIMGCODEC_LABEL = "0.8.0+nvimgcodec"
#: nvImageCodec's Python distributions (CUDA 12, CUDA 13).
NVIMGCODEC_DISTRIBUTIONS = ("nvidia-nvimgcodec-cu12", "nvidia-nvimgcodec-cu13")
UNKNOWN_VERSION = "unknown version"
#: CUDA driver API library (Linux) and its ``CUresult`` for success.
LIBCUDA = "libcuda.so.1"
_CUDA_SUCCESS = 0


@dataclass(frozen=True)
class DecoderStatus:
    """Whether decoder ``name`` can be used in this process; ``detail``: the versions
    found when it can, the reason when it cannot."""

    name: str
    available: bool
    detail: str


def check_decoder_name(decoder: str) -> str:
    """``decoder`` when it is one of :data:`DECODER_CHOICES`, else :class:`ConfigError`."""
    if decoder not in DECODER_CHOICES:
        raise ConfigError(
            f"pixel decoder {decoder!r} is unknown; expected one of {', '.join(DECODER_CHOICES)}"
        )
    return decoder


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def cuda_device_count() -> tuple[int, str]:
    """``(devices, why)``: CUDA devices the driver shows this process (honours
    ``CUDA_VISIBLE_DEVICES``), and why none when the count is 0. Initialises the
    CUDA driver (not a context) in this process."""
    try:
        cuda = ctypes.CDLL(LIBCUDA)
    except OSError as exc:
        return 0, f"no CUDA driver ({LIBCUDA}: {exc})"
    status = cuda.cuInit(0)
    if status != _CUDA_SUCCESS:
        return 0, f"cuInit failed with CUresult {status} (100 = no CUDA device visible)"
    count = ctypes.c_int(0)
    status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != _CUDA_SUCCESS:
        return 0, f"cuDeviceGetCount failed with CUresult {status}"
    return int(count.value), "" if count.value else "the CUDA driver shows no device"


def _nvimgcodec_status() -> DecoderStatus:
    """nvImageCodec: installed (found without importing it: its import loads the CUDA
    codec libraries and prints to stderr where they are missing), a CUDA device visible,
    then its pydicom plugin importable."""
    try:
        spec = importlib.util.find_spec("nvidia.nvimgcodec")
    except ModuleNotFoundError:  # no ``nvidia`` package at all
        spec = None
    if spec is None:
        return DecoderStatus(NVIMGCODEC, False, f"{NVIMGCODEC_DISTRIBUTIONS[0]} is not installed")
    installed = next((f"{d} {_version(d)}" for d in NVIMGCODEC_DISTRIBUTIONS if _version(d) != UNKNOWN_VERSION),
                     "nvImageCodec")
    devices, why = cuda_device_count()
    if devices == 0:
        return DecoderStatus(NVIMGCODEC, False, f"{installed} is installed; {why}")
    try:
        plugin = importlib.import_module(NVIMGCODEC_PLUGIN_MODULE)
    except ImportError as exc:
        return DecoderStatus(NVIMGCODEC, False, f"{installed}: {NVIMGCODEC_PLUGIN_MODULE} does not import ({exc})")
    if getattr(plugin, "nvimgcodec", None) is None:
        return DecoderStatus(NVIMGCODEC, False, f"{installed}: its pydicom plugin cannot import nvidia.nvimgcodec")
    return DecoderStatus(NVIMGCODEC, True, f"{installed}, {devices} CUDA device(s)")


def decoder_status(name: str) -> DecoderStatus:
    """Whether the named decoder (one of :data:`PREFERENCE`) can decode in this process."""
    if name == NVIMGCODEC:
        return _nvimgcodec_status()
    if name == GDCM:
        try:
            gdcm = importlib.import_module("gdcm")
        except ImportError as exc:
            return DecoderStatus(name, False, f"python-gdcm is not importable ({exc})")
        return DecoderStatus(name, True, f"GDCM {gdcm.Version.GetVersion()}")
    if name == PYLIBJPEG:
        try:
            importlib.import_module("pylibjpeg")
        except ImportError as exc:
            return DecoderStatus(name, False, f"pylibjpeg is not importable ({exc})")
        parts = [f"{dist} {_version(dist)}" for dist in ("pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")]
        return DecoderStatus(name, True, f"pylibjpeg {_version('pylibjpeg')} ({', '.join(parts)})")
    raise ConfigError(f"pixel decoder {name!r} is unknown; expected one of {', '.join(PREFERENCE)}")


def decoder_statuses() -> tuple[DecoderStatus, ...]:
    """:func:`decoder_status` of every named decoder, most preferred first."""
    return tuple(decoder_status(name) for name in PREFERENCE)


def resolve_decoder_order(decoder: str = AUTO) -> tuple[str, ...]:
    """The decoders to try, first to last: ``"auto"`` gives the available ones of
    :data:`PREFERENCE`; a name puts that decoder first, the other available ones after.

    Raises:
        ConfigError: ``decoder`` is not one of :data:`DECODER_CHOICES`, or names a
            decoder that is unavailable here (the message says why).
    """
    check_decoder_name(decoder)
    statuses = decoder_statuses()
    available = tuple(s.name for s in statuses if s.available)
    if decoder == AUTO:
        return available
    if decoder not in available:
        why = next(s.detail for s in statuses if s.name == decoder)
        raise ConfigError(
            f"pixel decoder {decoder!r} is unavailable here: {why}; expected an available decoder "
            f"({', '.join(available) or 'none'}) or 'auto'"
        )
    return (decoder, *(name for name in available if name != decoder))


def needs_fresh_workers(order: Sequence[str]) -> bool:
    """Whether worker processes decoding with ``order`` must not be forked (CUDA)."""
    return NVIMGCODEC in order


def plugin_label(name: str) -> str:
    """pydicom's plugin label of a named decoder."""
    return NVIMGCODEC_LABEL if name == NVIMGCODEC else name


def decoder_name(label: str) -> str:
    """The recorded name of pydicom plugin ``label`` (inverse of :func:`plugin_label`)."""
    return NVIMGCODEC if label == NVIMGCODEC_LABEL else label


def register_nvimgcodec() -> None:
    """Add nvImageCodec's plugin to the pydicom decoders of every transfer syntax it
    supports (once per process; later calls change nothing). pydicom's default plugin
    order is not changed: the plugin is used where ``decoding_plugin`` names it."""
    try:
        plugin = importlib.import_module(NVIMGCODEC_PLUGIN_MODULE)
    except ImportError as exc:
        raise ConfigError(f"pixel decoder 'nvimgcodec': {NVIMGCODEC_PLUGIN_MODULE} is not importable") from exc
    label = getattr(plugin, "NVIMGCODEC_PLUGIN_LABEL", NVIMGCODEC_LABEL)
    if label != NVIMGCODEC_LABEL:
        raise ConfigError(
            f"pixel decoder 'nvimgcodec': {NVIMGCODEC_PLUGIN_MODULE} registers as {label!r}; "
            f"expected {NVIMGCODEC_LABEL!r}"
        )
    for decoder_class in plugin.SUPPORTED_DECODER_CLASSES:
        if label not in decoder_class.available_plugins:
            decoder_class.add_plugin(label, (NVIMGCODEC_PLUGIN_MODULE, "_decode_frame"))


def prepare_process(order: Sequence[str]) -> None:
    """Make the decoders of ``order`` usable in this process (call once per process
    before :func:`decode_pixels`; workers call it too)."""
    if NVIMGCODEC in order:
        register_nvimgcodec()


def plugin_labels(available: Sequence[str], order: Sequence[str]) -> tuple[str, ...]:
    """pydicom plugin labels to try, first to last: those of ``order`` among the
    ``available`` plugins of a transfer syntax's decoder, then the other available ones."""
    first = tuple(plugin_label(name) for name in order if plugin_label(name) in available)
    return first + tuple(label for label in available if label not in first)


def decode_pixels(ds: Dataset, order: Sequence[str], display: str) -> tuple[np.ndarray, str]:
    """Decode the pixel data of ``ds`` (its ``file_meta.TransferSyntaxUID`` set): not
    encapsulated pixel data directly, encapsulated pixel data with the first plugin of
    :func:`plugin_labels` that succeeds.

    Returns:
        ``(stored, name)``: the stored values ``[H, W]`` (no rescale) and the decoder
        that produced them (:func:`decoder_name` of the plugin, or :data:`NATIVE`).

    Raises:
        PixelDecodeError: encapsulated pixel data that no plugin decodes; the message
            names ``display``, the transfer syntax and every plugin's failure.
        BaseException: pydicom's own error for pixel data that is not encapsulated; a
            plugin's panic.
    """
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not syntax.is_encapsulated:
        return ds.pixel_array, NATIVE
    prefix = f"{display}: cannot decode Pixel Data {PIXEL_DATA_TAG} ({syntax.name}, {syntax})"
    try:
        pixel_decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise PixelDecodeError(f"{prefix}: pydicom has no decoder for this transfer syntax; "
                               "expected a transfer syntax pydicom decodes") from exc
    labels = plugin_labels(pixel_decoder.available_plugins, order)
    if not labels:
        missing = "; ".join(pixel_decoder.missing_dependencies)
        raise PixelDecodeError(f"{prefix}: every decoding plugin misses a dependency ({missing}); "
                               "expected one of them installed")
    failures, last = [], None
    for label in labels:
        try:
            ds.pixel_array_options(decoding_plugin=label)
            return ds.pixel_array, decoder_name(label)
        except Exception as exc:  # noqa: BLE001 - any plugin failure hands the slice on, as in pydicom
            failures.append(_failure(label, exc))
            last = exc
    raise PixelDecodeError(f"{prefix} with any plugin ({'; '.join(failures)}); "
                           "expected complete, decodable pixel data") from last


def _failure(label: str, exc: BaseException) -> str:
    """``"<decoder>: <why>"`` of one failed plugin, without pydicom's wrapper line
    (``Unable to decode as exceptions were raised by all available plugins:``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].startswith("Unable to decode") and lines[1].startswith(f"{label}: "):
        return f"{decoder_name(label)}: {lines[1][len(label) + 2:]}"
    return f"{decoder_name(label)}: {type(exc).__name__}: {' '.join(lines)}"
