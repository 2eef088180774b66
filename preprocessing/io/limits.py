"""Size limits of :class:`~covidct.preprocessing.reader_config.ReaderConfig`, checked before anything is
allocated, parsed or inflated.

- the decoded volume: ``N x H x W x 2`` bytes (int16) from the headers, and Rows/Columns
  (in-plane pixels) within ``matrix_size_px``;
- one file (DICOM, TIFF slice) or zip entry: at most ``max_file_bytes``;
- a zip archive: the entry count from the end-of-central-directory record before the
  central directory is parsed, then every entry's declared size, its compression ratio and
  the declared total; while inflating, reading stops at the declared size (the headers are
  not trusted).

Every refusal is a :class:`~covidct.errors.ResourceLimitError` naming the file, the value
and the limit with its ``ReaderConfig`` field.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from covidct.errors import GeometryMismatchError, PixelDecodeError, ResourceLimitError, UnsupportedFormatError
from covidct.preprocessing.reader_config import ReaderConfig

#: Entries smaller than this (bytes) are not held to the compression ratio: they cannot
#: inflate past it each, and their sum is held to the memory budget. A uniform 512 x 512
#: CT slice deflates about 170-fold.
RATIO_CHECK_MIN_BYTES = 1 << 20
#: Bytes inflated per read while reading a zip entry.
READ_CHUNK_BYTES = 1 << 20
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF


def mib(num_bytes: float) -> str:
    """Bytes as a short human-readable MiB/GiB figure."""
    if num_bytes >= 1024**3:
        return f"{num_bytes / 1024**3:.3g} GiB"
    return f"{num_bytes / 1024**2:.3g} MiB"


def file_size_problem(size: int, config: ReaderConfig) -> str | None:
    """Why a file of ``size`` bytes is refused, or ``None`` when it is within the budget."""
    if size > config.max_file_bytes:
        return (
            f"{size} bytes ({mib(size)}); expected at most {config.max_file_bytes} bytes per file "
            "(ReaderConfig.max_file_bytes)"
        )
    return None


def check_file_size(where: str, size: int, config: ReaderConfig) -> None:
    """:class:`ResourceLimitError` when one file is larger than ``max_file_bytes``."""
    problem = file_size_problem(size, config)
    if problem:
        raise ResourceLimitError(f"{where}: file of {problem}")


def check_file_count(where: str, count: int, config: ReaderConfig, what: str = "files") -> None:
    """:class:`ResourceLimitError` when a folder or archive holds more than ``max_files``."""
    if count > config.max_files:
        raise ResourceLimitError(
            f"{where}: holds {count} {what}; expected at most {config.max_files} (ReaderConfig.max_files)"
        )


def check_matrix(where: str, rows: int | None, columns: int | None, config: ReaderConfig, what: str) -> None:
    """In-plane size (pixels) within ``matrix_size_px``.

    Above the maximum: :class:`ResourceLimitError`; missing or below the minimum:
    :class:`GeometryMismatchError`. ``what`` names the source, e.g. the DICOM tags.
    """
    low, high = config.matrix_size_px
    if rows is not None and columns is not None and low <= rows <= high and low <= columns <= high:
        return
    message = (
        f"{where}: {what} is {rows}x{columns}; expected each in [{low}, {high}] pixels "
        "(ReaderConfig.matrix_size_px)"
    )
    if (rows or 0) > high or (columns or 0) > high:
        raise ResourceLimitError(message)
    raise GeometryMismatchError(message)


def check_volume_bytes(where: str, shape: tuple[int, int, int], config: ReaderConfig) -> None:
    """:class:`ResourceLimitError` when an int16 volume ``[N, H, W]`` exceeds the budget."""
    n, h, w = (int(s) for s in shape)
    size = n * h * w * 2
    if size > config.max_volume_bytes:
        raise ResourceLimitError(
            f"{where}: the volume of {n} x {h} x {w} int16 voxels would take {size} bytes ({mib(size)}); "
            f"expected at most {config.max_volume_bytes} bytes ({mib(config.max_volume_bytes)}, "
            "ReaderConfig.max_volume_bytes)"
        )


def zip_entry_count(archive: Path) -> int:
    """Entries declared by the end-of-central-directory record (zip64 aware), read from the
    archive's tail without parsing the central directory."""
    with open(archive, "rb") as fp:
        fp.seek(0, 2)
        end = fp.tell()
        start = max(0, end - _EOCD_SIZE - _MAX_COMMENT)
        fp.seek(start)
        tail = fp.read(end - start)
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < _EOCD_SIZE:
            raise UnsupportedFormatError(f"{archive}: not a readable zip archive (no end of central directory)")
        count = struct.unpack_from("<H", tail, at + 10)[0]
        locator = at - 20
        if count == 0xFFFF and locator >= 0 and tail[locator:locator + 4] == _EOCD64_LOCATOR:
            offset = struct.unpack_from("<Q", tail, locator + 8)[0]
            fp.seek(offset)
            record = fp.read(56)
            if len(record) == 56 and record[:4] == _EOCD64:
                count = struct.unpack_from("<Q", record, 32)[0]
    return int(count)


def checked_zip_entries(archive: Path, config: ReaderConfig) -> list[zipfile.ZipInfo]:
    """The archive's entries after checking count, declared sizes, ratios and total.

    Nothing is inflated. :class:`ResourceLimitError` on any limit,
    :class:`UnsupportedFormatError` for an unreadable archive.
    """
    try:
        check_file_count(str(archive), zip_entry_count(archive), config, "zip entries")
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedFormatError(f"{archive}: not a readable zip archive ({exc})") from exc
    check_file_count(str(archive), len(infos), config, "zip entries")
    total = 0
    for info in infos:
        where = f"{archive}::{info.filename}"
        problem = file_size_problem(info.file_size, config)
        if problem:
            raise ResourceLimitError(f"{where}: zip entry declares {problem}")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_CHECK_MIN_BYTES and ratio > config.max_compression_ratio:
            raise ResourceLimitError(
                f"{where}: zip entry inflates {info.compress_size} to {info.file_size} bytes, a compression "
                f"ratio of {ratio:.0f}; expected at most {config.max_compression_ratio:g} "
                "(ReaderConfig.max_compression_ratio)"
            )
        total += info.file_size
    if total > config.max_volume_bytes:
        raise ResourceLimitError(
            f"{archive}: zip entries declare {total} bytes ({mib(total)}) in all; expected at most "
            f"{config.max_volume_bytes} bytes (ReaderConfig.max_volume_bytes)"
        )
    return infos


def read_zip_member(archive: zipfile.ZipFile, member: str, limit: int, display: str) -> bytes:
    """The inflated bytes of one entry, read in chunks and never beyond its declared size
    or ``limit``; :class:`ResourceLimitError` when the data runs past them."""
    info = archive.getinfo(member)
    cap = min(info.file_size, limit)
    parts: list[bytes] = []
    total = 0
    try:
        with archive.open(info) as fp:
            while total <= cap:
                chunk = fp.read(min(READ_CHUNK_BYTES, cap + 1 - total))
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
    except zipfile.BadZipFile as exc:
        raise PixelDecodeError(
            f"{display}: zip entry is corrupt or inflates to other than its declared {info.file_size} bytes "
            f"({exc}); expected an intact archive"
        ) from exc
    if total > cap:
        raise ResourceLimitError(
            f"{display}: zip entry inflates past {cap} bytes (declared {info.file_size}, limit {limit}, "
            "ReaderConfig.max_file_bytes); reading stopped"
        )
    return b"".join(parts)
