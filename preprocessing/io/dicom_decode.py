"""Decode the pixel data of a scanned DICOM series to HU int16 ``[N, H, W]``.

Any transfer syntax pydicom 3 can decode with the installed plugins works: uncompressed,
RLE Lossless, JPEG Lossless (pylibjpeg-libjpeg), JPEG 2000 (pylibjpeg-openjpeg).
HU = stored * RescaleSlope + RescaleIntercept, rounded and clipped to the int16 range.

Slices are decoded in contiguous chunks by a process pool (one zip archive is opened
once per chunk); small series, or one worker, decode in-process (the decoders hold the
GIL, so threads would not help). Workers are forked while the caller is single-threaded;
in a threaded caller they come from ``forkserver``, which - like any multiprocessing
start method but ``fork`` - needs the calling script's top level guarded by
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from covidct.errors import ConfigError, PixelDecodeError, ResourceLimitError
from preprocessing.config import ReaderConfig
from preprocessing.io.dicom_scan import PIXEL_DATA_TAG, quiet_pydicom
from preprocessing.io.limits import read_zip_member
from preprocessing.io.reader_checks import clip_to_int16

#: Below this many slices per worker, the pool's start-up costs more than it saves.
MIN_SLICES_PER_WORKER = 24
#: Chunks per worker (load balancing against per-task overhead).
CHUNKS_PER_WORKER = 4


@dataclass(frozen=True)
class DecodeTask:
    """One slice to decode: file ``path`` (or zip ``path`` + ``member``), expected
    ``rows`` x ``columns``, the HU rescale read from its header and the most bytes a zip
    member may inflate to."""

    display: str
    path: str
    member: str | None
    rows: int
    columns: int
    slope: float
    intercept: float
    max_bytes: int = ReaderConfig.max_file_bytes


def resolve_workers(decode_workers: int, num_slices: int) -> int:
    """Processes to use: ``decode_workers`` (0 = all cores), capped so that each
    worker gets at least :data:`MIN_SLICES_PER_WORKER` slices."""
    if decode_workers < 0:
        raise ConfigError(
            f"ReaderConfig.decode_workers is {decode_workers}; expected 0 (all cores) or more"
        )
    wanted = decode_workers or os.cpu_count() or 1
    return max(1, min(wanted, num_slices // MIN_SLICES_PER_WORKER))


def decode_series(tasks: Sequence[DecodeTask], *, workers: int = 1) -> np.ndarray:
    """Decode every task (in order) to HU int16 ``[N, H, W]`` with ``workers`` processes."""
    if not tasks:
        raise ValueError("decode_series needs at least one slice")
    out = np.empty((len(tasks), tasks[0].rows, tasks[0].columns), dtype=np.int16)
    if workers <= 1:
        out[:] = decode_chunk(tasks)
        return out
    size = -(-len(tasks) // (workers * CHUNKS_PER_WORKER))
    starts = range(0, len(tasks), size)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            chunks = pool.map(decode_chunk, [tasks[s : s + size] for s in starts])
            for start, chunk in zip(starts, chunks):
                out[start : start + len(chunk)] = chunk
    except BrokenProcessPool as exc:
        raise PixelDecodeError(
            f"{tasks[0].display} and {len(tasks) - 1} more: a decoder process died while "
            f"decoding Pixel Data {PIXEL_DATA_TAG} ({exc}); retry with "
            "ReaderConfig(decode_workers=1)"
        ) from exc
    return out


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` while this process runs a single thread (fast; no re-import of
    ``__main__``), else ``forkserver`` (fork is unsafe with threads), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def decode_chunk(tasks: Sequence[DecodeTask]) -> np.ndarray:
    """Decode consecutive slices in this process: HU int16 ``[len(tasks), H, W]``."""
    out = np.empty((len(tasks), tasks[0].rows, tasks[0].columns), dtype=np.int16)
    with ExitStack() as stack:
        archive = None  # all members of one series come from one zip
        if tasks[0].member is not None:
            archive = stack.enter_context(zipfile.ZipFile(tasks[0].path))
        for i, task in enumerate(tasks):
            out[i] = decode_slice(task, archive)
    return out


def decode_slice(task: DecodeTask, archive: zipfile.ZipFile | None = None) -> np.ndarray:
    """One slice's HU int16 ``[H, W]``; :class:`PixelDecodeError` names file and tag."""
    try:
        source: str | io.BytesIO = task.path  # a zip member is inflated in bounded chunks
        if archive is not None:
            source = io.BytesIO(read_zip_member(archive, task.member or "", task.max_bytes, task.display))
        with quiet_pydicom():
            ds = pydicom.dcmread(source, force=True)  # the scan accepted it as DICOM
            if "TransferSyntaxUID" not in ds.file_meta:  # raw data set without file meta
                ds.file_meta.TransferSyntaxUID = _syntax_of(*ds.original_encoding)
            syntax = ds.file_meta.TransferSyntaxUID
            stored = ds.pixel_array
    except (KeyboardInterrupt, SystemExit, ResourceLimitError, PixelDecodeError):
        raise
    except BaseException as exc:  # any decoder failure, including the
        # Rust plugins' PanicException (a BaseException), is a decode error
        raise PixelDecodeError(
            f"{task.display}: cannot decode Pixel Data {PIXEL_DATA_TAG} "
            f"({type(exc).__name__}: {exc}); expected complete, decodable pixel data"
        ) from exc
    if stored.shape != (task.rows, task.columns):
        raise PixelDecodeError(
            f"{task.display}: Pixel Data {PIXEL_DATA_TAG} ({syntax.name}) "
            f"decodes to shape {stored.shape}; expected ({task.rows}, {task.columns})"
        )
    return stored_to_hu(stored, task.slope, task.intercept)


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

