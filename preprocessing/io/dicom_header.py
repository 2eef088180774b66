"""Bytes of one file -> its DICOM header (a pydicom ``Dataset`` without pixel data), parsed within bounds.

:func:`read_header` reads a file's data elements up to its Pixel Data (7FE0,0010) and
says whether pixel data follows; data that is not DICOM gives a reason instead. The
parse stops after :data:`MAX_HEADER_ELEMENTS` top-level elements or at an element longer
than its file (``size`` bytes; a functional-group sequence of thousands of frames is one
top-level element), and data without the 'DICM' prefix is parsed only when it starts like
a data set (group 0002 or 0008). :func:`quiet_pydicom` silences pydicom's value
validation while headers and pixels are read.

Classifying the header into CT slices or a skipped file is
:mod:`covidct.preprocessing.io.dicom_scan`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from covidct.errors import dicom_tag

_PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_BE = b"\x7f\xe0\x00\x10"
#: Pixel Data, Float and Double Float Pixel Data: the header scan stops before them.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: Top-level data elements read before the header scan gives up (real CT: a few hundred).
MAX_HEADER_ELEMENTS = 10_000
#: Groups a DICOM data set without the 'DICM' preamble may start with (file meta, identifying).
_RAW_FIRST_GROUPS = (0x0002, 0x0008)
_UNDEFINED_LENGTH = 0xFFFFFFFF


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Read without pydicom's value-validation warnings and log records (scanners write
    non-conformant values, e.g. UUIDs as UIDs; they do not matter here)."""
    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        yield


class _HeaderLimitError(Exception):
    """A header parse stopped by :func:`_header_guard`."""


def _header_guard(size: int | None) -> Callable[[int, str | None, int], bool]:
    """pydicom ``stop_when`` callback: stop at Pixel Data; raise after
    :data:`MAX_HEADER_ELEMENTS` elements or at an element longer than the file."""
    count = 0

    def stop(tag: int, vr: str | None, length: int) -> bool:
        nonlocal count
        if tag in _PIXEL_TAGS:
            return True
        count += 1
        if count > MAX_HEADER_ELEMENTS:
            raise _HeaderLimitError(f"more than {MAX_HEADER_ELEMENTS} data elements before Pixel Data")
        if size is not None and length != _UNDEFINED_LENGTH and length > size:
            raise _HeaderLimitError(
                f"data element {dicom_tag(tag >> 16, tag & 0xFFFF)} declares {length} bytes; the file has {size}"
            )
        return False

    return stop


def _starts_like_a_data_set(head: bytes) -> bool:
    """Whether bytes 0-1 hold the group of a data set's first element (either byte order)."""
    return len(head) >= 2 and any(
        int.from_bytes(head[:2], order) in _RAW_FIRST_GROUPS for order in ("little", "big")
    )


def read_header(fp: BinaryIO, size: int | None = None) -> tuple[pydicom.Dataset | None, bool, str]:
    """(dataset, pixel data follows, problem) of a file of ``size`` bytes (``None``: unknown), read from
    ``fp``'s start; the dataset is ``None`` for non-DICOM (``problem`` says why), else ``problem`` is ``""``."""
    head = fp.read(4)
    if not head:
        return None, False, "empty file (0 bytes); expected a DICOM file"
    with quiet_pydicom():
        try:
            fp.seek(0)
            ds = read_partial(fp, stop_when=_header_guard(size))
        except InvalidDicomError:
            if not _starts_like_a_data_set(head):
                return None, False, (
                    "not DICOM: no 'DICM' prefix at byte 128 and no data element of group 0002/0008 "
                    f"(SOP Class UID {dicom_tag(0x0008, 0x0016)}) at byte 0; expected a DICOM file"
                )
            try:  # DICOM without the 128-byte preamble and 'DICM' prefix
                fp.seek(0)
                ds = read_partial(fp, stop_when=_header_guard(size), force=True)
            except Exception as exc:  # noqa: BLE001 - anything unparsable is "not DICOM"
                return None, False, (
                    f"not DICOM: no 'DICM' prefix and unparsable ({exc}); expected a DICOM file"
                )
            if "SOPClassUID" not in ds:
                return None, False, (
                    "not DICOM: no 'DICM' prefix at byte 128 and no SOP Class UID "
                    f"{dicom_tag(0x0008, 0x0016)}; expected a DICOM file"
                )
        except Exception as exc:  # noqa: BLE001 - truncated/garbled header
            return None, False, (
                f"not DICOM: unreadable header ({type(exc).__name__}: {exc}); "
                "expected a DICOM file"
            )
    return ds, _pixel_data_follows(fp, ds), ""


def _pixel_data_follows(fp: BinaryIO, ds: pydicom.Dataset) -> bool:
    """Whether (7FE0,0010) comes next: stop_before_pixels leaves the file just before it."""
    tag = fp.read(4)
    return tag == (_PIXEL_DATA_LE if ds.original_encoding[1] in (True, None) else _PIXEL_DATA_BE)
