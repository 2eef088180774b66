"""Decode the pixel data of a scanned DICOM series to HU int16 ``[N, H, W]``.

Any transfer syntax pydicom 3 can decode with the installed plugins works: uncompressed,
RLE Lossless, JPEG Lossless, JPEG-LS, JPEG 2000, HTJ2K. Which plugin decodes is a
choice (``decoder``: ``"auto"``, ``"nvimgcodec"``, ``"gdcm"`` or ``"pylibjpeg"``, see
:mod:`covidct.preprocessing.io.pixel_decoders`), resolved once per series in the calling process
and applied to every slice, in the workers too; :func:`decode_series_recorded` also
returns the decoder that produced each slice.
HU = stored * RescaleSlope + RescaleIntercept (per slice; per frame for multi-frame
files), rounded and clipped to the int16 range.

A slice is a single-frame file or one frame (``DecodeTask.frame``) of an Enhanced /
Legacy Converted Enhanced CT file. The tasks of one chunk are grouped by file: each file
is read once, and of a multi-frame file each wanted frame is cut out of the Pixel Data
(the fragments of encapsulated data, found through the Basic or Extended Offset Table
where there is one; the bytes of native data) and decoded once, as a one-frame data set,
by the same decoder choice.

Slices are decoded in contiguous chunks by a process pool (one zip archive is opened
once per chunk; a series from multi-frame files is cut into one chunk per worker, so
that each worker reads each file once); small series, or one worker, decode in-process
(the decoders hold the GIL, so threads would not help). Workers are forked while the caller is single-threaded
and the choice does not use CUDA; in a threaded caller, or with ``nvimgcodec`` (CUDA
does not survive ``fork``), they come from ``forkserver``, which - like any
multiprocessing start method but ``fork`` - needs the calling script's top level guarded
by ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from covidct.errors import ConfigError, PixelDecodeError, ResourceLimitError, dicom_tag
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.dicom_header import quiet_pydicom
from covidct.preprocessing.io.dicom_scan import PIXEL_DATA_TAG, SliceHeader
from covidct.preprocessing.io.limits import read_zip_member
from covidct.preprocessing.io.pixel_decoders import (
    AUTO,
    decode_pixels,
    needs_fresh_workers,
    prepare_process,
    resolve_decoder_order,
)
from covidct.preprocessing.io.reader_checks import clip_to_int16

_T = TypeVar("_T")
#: Below this many slices per worker, the pool's start-up costs more than it saves.
MIN_SLICES_PER_WORKER = 24
#: Chunks per worker (load balancing against per-task overhead).
CHUNKS_PER_WORKER = 4
#: The Image Pixel attributes a one-frame data set cut from a multi-frame file keeps.
FRAME_PIXEL_ATTRIBUTES = (
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PlanarConfiguration",
)
NUMBER_OF_FRAMES = dicom_tag(0x0028, 0x0008)


@dataclass(frozen=True)
class DecodeTask:
    """One slice to decode: file ``path`` (or zip ``path`` + ``member``), expected
    ``rows`` x ``columns``, the HU rescale read from its header, the most bytes a zip
    member may inflate to and, of a multi-frame file, the 1-based ``frame``."""

    display: str
    path: str
    member: str | None
    rows: int
    columns: int
    slope: float
    intercept: float
    max_bytes: int = ReaderConfig.max_file_bytes
    frame: int | None = None

    @property
    def file_key(self) -> tuple[str, str | None]:
        """Which file the slice lies in: ``(path, member)``."""
        return (self.path, self.member)

    @property
    def file_display(self) -> str:
        """How messages name the file (``display`` names the frame too)."""
        return f"{self.path}::{self.member}" if self.member is not None else self.path


@dataclass(frozen=True)
class DecodedSeries:
    """A decoded series: ``hu`` int16 ``[N, H, W]`` and, per slice, the decoder that
    produced it (``"gdcm"``, ``"pylibjpeg"``, ``"nvimgcodec"``, another pydicom plugin's
    label, or ``"native"`` for pixel data that is not encapsulated)."""

    hu: np.ndarray
    decoders: tuple[str, ...]

    @property
    def decoders_used(self) -> tuple[str, ...]:
        """The distinct decoders of :attr:`decoders`, in the order of first use."""
        return tuple(dict.fromkeys(self.decoders))


def tasks_for_slices(slices: Sequence[SliceHeader], max_bytes: int = ReaderConfig.max_file_bytes) -> list[DecodeTask]:
    """One :class:`DecodeTask` per scanned slice header (rescale already validated by the scan)."""
    return [
        DecodeTask(
            display=h.ref.display,
            path=h.ref.path,
            member=h.ref.member,
            rows=int(h.rows or 0),
            columns=int(h.columns or 0),
            slope=float(h.slope),  # type: ignore[arg-type]
            intercept=float(h.intercept),  # type: ignore[arg-type]
            max_bytes=max_bytes,
            frame=h.frame,
        )
        for h in slices
    ]


def resolve_workers(decode_workers: int, num_slices: int) -> int:
    """Processes to use: ``decode_workers`` (0 = all cores), capped so that each
    worker gets at least :data:`MIN_SLICES_PER_WORKER` slices."""
    if decode_workers < 0:
        raise ConfigError(
            f"ReaderConfig.decode_workers is {decode_workers}; expected 0 (all cores) or more"
        )
    wanted = decode_workers or os.cpu_count() or 1
    return max(1, min(wanted, num_slices // MIN_SLICES_PER_WORKER))


def decode_series(tasks: Sequence[DecodeTask], *, workers: int = 1, decoder: str = AUTO) -> np.ndarray:
    """Decode every task (in order) to HU int16 ``[N, H, W]`` with ``workers`` processes
    and the ``decoder`` choice (:func:`decode_series_recorded` without the record)."""
    return decode_series_recorded(tasks, workers=workers, decoder=decoder).hu


def decode_series_recorded(tasks: Sequence[DecodeTask], *, workers: int = 1, decoder: str = AUTO) -> DecodedSeries:
    """Decode every task (in order) to HU int16 ``[N, H, W]`` with ``workers`` processes;
    also return which decoder produced each slice.

    Raises:
        ConfigError: ``decoder`` is unknown or unavailable here.
        PixelDecodeError: a slice cannot be decoded, or a worker process died.
    """
    if not tasks:
        raise ValueError("decode_series needs at least one slice")
    order = resolve_decoder_order(decoder)
    if workers <= 1:
        hu, names = decode_chunk_recorded(tasks, order)
        return DecodedSeries(hu, names)
    out = np.empty((len(tasks), tasks[0].rows, tasks[0].columns), dtype=np.int16)
    decoders: list[str] = []
    size = chunk_size(tasks, workers)
    starts = range(0, len(tasks), size)
    context = _pool_context(fresh=needs_fresh_workers(order))
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            chunks = pool.map(partial(decode_chunk_recorded, order=order), [tasks[s : s + size] for s in starts])
            for start, (chunk, names) in zip(starts, chunks):
                out[start : start + len(chunk)] = chunk
                decoders.extend(names)
    except BrokenProcessPool as exc:
        raise PixelDecodeError(
            f"{tasks[0].display} and {len(tasks) - 1} more: a decoder process died while "
            f"decoding Pixel Data {PIXEL_DATA_TAG} ({exc}); retry with "
            "ReaderConfig(decode_workers=1)"
        ) from exc
    return DecodedSeries(out, tuple(decoders))


def chunk_size(tasks: Sequence[DecodeTask], workers: int) -> int:
    """Slices per pool chunk: :data:`CHUNKS_PER_WORKER` chunks per worker for single-frame
    files; one chunk per worker where files hold several slices (multi-frame), since
    every chunk reads each of its files whole."""
    files = len({t.file_key for t in tasks})
    chunks = workers * (CHUNKS_PER_WORKER if files == len(tasks) else 1)
    return max(1, -(-len(tasks) // chunks))


def _pool_context(fresh: bool = False) -> multiprocessing.context.BaseContext:
    """``fork`` while this process runs a single thread and ``fresh`` is false (fast; no
    re-import of ``__main__``), else ``forkserver`` (fork is unsafe with threads and
    with CUDA), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if not fresh and "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def decode_chunk_recorded(tasks: Sequence[DecodeTask], order: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode consecutive slices in this process with the decoders of ``order`` (from
    :func:`~covidct.preprocessing.io.pixel_decoders.resolve_decoder_order`): HU int16
    ``[len(tasks), H, W]`` and the decoder of each slice. Each file is read once."""
    prepare_process(order)
    out = np.empty((len(tasks), tasks[0].rows, tasks[0].columns), dtype=np.int16)
    names = [""] * len(tasks)
    by_file: dict[tuple[str, str | None], list[int]] = {}
    for i, task in enumerate(tasks):
        by_file.setdefault(task.file_key, []).append(i)
    with ExitStack() as stack:
        archive = None  # all members of one series come from one zip
        if tasks[0].member is not None:
            archive = stack.enter_context(zipfile.ZipFile(tasks[0].path))
        for indices in by_file.values():
            decoded = decode_file_recorded([tasks[i] for i in indices], archive, order)
            for i, (hu, name) in zip(indices, decoded):
                out[i], names[i] = hu, name
    return out, tuple(names)


def decode_slice(task: DecodeTask, archive: zipfile.ZipFile | None = None, decoder: str = AUTO) -> np.ndarray:
    """One slice's HU int16 ``[H, W]``; :class:`PixelDecodeError` names file and tag."""
    order = resolve_decoder_order(decoder)
    prepare_process(order)
    return decode_slice_recorded(task, archive, order)[0]


def decode_slice_recorded(
    task: DecodeTask, archive: zipfile.ZipFile | None, order: Sequence[str]
) -> tuple[np.ndarray, str]:
    """One slice's HU int16 ``[H, W]`` and the decoder that produced it, trying the
    decoders of ``order`` (prepared in this process); :class:`PixelDecodeError` names
    file and tag."""
    return decode_file_recorded([task], archive, order)[0]


def decode_file_recorded(
    tasks: Sequence[DecodeTask], archive: zipfile.ZipFile | None, order: Sequence[str]
) -> list[tuple[np.ndarray, str]]:
    """The slices ``tasks`` of ONE file, in order: HU int16 ``[H, W]`` and decoder each.
    The file is read once; a single-frame file is decoded whole, each frame of a
    multi-frame file is decoded once. :class:`PixelDecodeError` names file, frame and tag."""
    first = tasks[0]
    ds = _guarded(first.file_display, lambda: read_pixel_dataset(first, archive))
    if first.frame is None:
        return [_decoded(task, ds, order) for task in tasks]
    payloads = _guarded(first.file_display, lambda: frame_payloads(ds, {t.frame for t in tasks}, first.file_display))
    return [_decoded(task, frame_dataset(ds, payloads[task.frame]), order) for task in tasks]


def read_pixel_dataset(task: DecodeTask, archive: zipfile.ZipFile | None) -> Dataset:
    """The whole data set of a task's file (a zip member is inflated in bounded chunks),
    with its transfer syntax in ``file_meta``."""
    source: str | io.BytesIO = task.path
    if archive is not None:
        source = io.BytesIO(read_zip_member(archive, task.member or "", task.max_bytes, task.file_display))
    with quiet_pydicom():
        ds = pydicom.dcmread(source, force=True)  # the scan accepted it as DICOM
        if "TransferSyntaxUID" not in ds.file_meta:  # raw data set without file meta
            ds.file_meta.TransferSyntaxUID = _syntax_of(*ds.original_encoding)
    return ds


def frame_payloads(ds: Dataset, frames: set[int], display: str) -> dict[int, bytes]:
    """The encoded bytes of the wanted 1-based ``frames`` of a multi-frame data set:
    one frame's fragments (encapsulated) or its slice of the Pixel Data (native)."""
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if max(frames) > count:
        raise PixelDecodeError(
            f"{display}: frame {max(frames)} wanted but Number of Frames {NUMBER_OF_FRAMES} is {count}; "
            "expected frames of the file"
        )
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    data = ds.PixelData
    found: dict[int, bytes] = {}
    if syntax.is_encapsulated:
        extended = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        for number, frame in enumerate(generate_frames(data, number_of_frames=count, extended_offsets=extended), 1):
            if number in frames:
                found[number] = frame
                if len(found) == len(frames):
                    break
        if len(found) < len(frames):
            raise PixelDecodeError(
                f"{display}: Pixel Data {PIXEL_DATA_TAG} ({syntax.name}) holds fewer frames than frame "
                f"{min(frames - found.keys())}; expected {count} (Number of Frames {NUMBER_OF_FRAMES})"
            )
        return found
    bits = int(ds.BitsAllocated)
    if bits % 8:
        raise PixelDecodeError(
            f"{display}: Bits Allocated {dicom_tag(0x0028, 0x0100)} is {bits}; expected a multiple of 8 "
            "in a multi-frame CT file"
        )
    length = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
    if len(data) < count * length:
        raise PixelDecodeError(
            f"{display}: Pixel Data {PIXEL_DATA_TAG} has {len(data)} bytes; expected {count} frames of "
            f"{length} bytes ({count * length})"
        )
    return {number: data[(number - 1) * length : number * length] for number in frames}


def frame_dataset(ds: Dataset, payload: bytes) -> Dataset:
    """A one-frame data set with the Image Pixel attributes of ``ds`` and ``payload`` as
    its Pixel Data (encapsulated again where ``ds`` is), for the decoder choice."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    frame = Dataset()
    frame.file_meta = FileMetaDataset()
    frame.file_meta.TransferSyntaxUID = syntax
    for keyword in FRAME_PIXEL_ATTRIBUTES:
        if keyword in ds:
            frame.add(ds[keyword])
    frame.NumberOfFrames = 1
    if syntax.is_encapsulated:
        frame.add_new(0x7FE00010, "OB", encapsulate([payload]))
    else:
        frame.add_new(0x7FE00010, "OW" if int(ds.BitsAllocated) > 8 else "OB", payload)
    frame.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
    return frame


def _decoded(task: DecodeTask, ds: Dataset, order: Sequence[str]) -> tuple[np.ndarray, str]:
    """HU of one slice from its (one-frame) data set, and the decoder."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)

    def decode() -> tuple[np.ndarray, str]:
        with quiet_pydicom():
            return decode_pixels(ds, order, task.display)

    stored, name = _guarded(task.display, decode)
    if stored.shape != (task.rows, task.columns):
        raise PixelDecodeError(
            f"{task.display}: Pixel Data {PIXEL_DATA_TAG} ({syntax.name}) "
            f"decodes to shape {stored.shape}; expected ({task.rows}, {task.columns})"
        )
    return stored_to_hu(stored, task.slope, task.intercept), name


def _guarded(display: str, step: Callable[[], _T]) -> _T:
    """Run ``step``; any failure but the typed ones becomes a :class:`PixelDecodeError`."""
    try:
        return step()
    except (KeyboardInterrupt, SystemExit, ResourceLimitError, PixelDecodeError):
        raise
    except BaseException as exc:  # any decoder failure, including the
        # Rust plugins' PanicException (a BaseException), is a decode error
        raise PixelDecodeError(
            f"{display}: cannot decode Pixel Data {PIXEL_DATA_TAG} "
            f"({type(exc).__name__}: {exc}); expected complete, decodable pixel data"
        ) from exc


def _syntax_of(implicit_vr: bool | None, little_endian: bool | None) -> UID:
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRBigEndian if little_endian is False else ExplicitVRLittleEndian


def stored_to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU = stored * slope + intercept, rounded, clipped to int16."""
    if slope == 1.0 and float(intercept).is_integer():
        hu = stored.astype(np.int32) + int(intercept)
    else:
        hu = np.rint(stored.astype(np.float64) * slope + intercept)
    return clip_to_int16(hu)

