"""The files of one input: a folder's regular files or a zip archive's entries.

Nothing outside the input's root is opened: symlinks resolving outside a folder and
symlinked folders are skipped, and a zip entry that would land outside the archive's root
(``../x``, absolute paths, drive letters) rejects the whole archive. Symlink loops,
dangling links, FIFOs, sockets, devices and unreadable entries are skipped unopened with
their reason, files are opened non-blocking and checked to be regular, and files over
``ReaderConfig.max_file_bytes`` are skipped unparsed. Zip archives are checked by
:mod:`covidct.preprocessing.io.limits` before anything is inflated.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from covidct.errors import UnsafeArchivePathError
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.limits import check_file_count, checked_zip_entries, file_size_problem

logger = logging.getLogger(__name__)

# Skip kinds (SkippedFile.kind); dicom_series maps them to the error raised when no
# series is left.
NOT_DICOM, NON_IMAGE, MODALITY, UNSUPPORTED, LOCALIZER, NON_AXIAL, OTHER_SERIES = (
    "not_dicom", "non_image", "modality", "unsupported", "localizer", "non_axial", "other_series",
)
#: A DICOMDIR (Media Storage Directory): the index of a CD/PACS export, not a bad file.
DIRECTORY = "directory"
#: Not opened: symlink loop, dangling link, FIFO, socket, device, unreadable.
SPECIAL = "special"
#: Not parsed: larger than ReaderConfig.max_file_bytes.
TOO_LARGE = "too_large"


@dataclass(frozen=True)
class FileRef:
    """One file of the input: ``name`` is its POSIX path relative to the input root.

    ``path`` is the file on disk (folder input) or the zip archive; ``member`` the raw
    zip entry name (``None`` for folder input); ``frame`` the 1-based frame of a
    multi-frame file that one slice comes from (``None``: the file as a whole).
    """

    name: str
    path: str
    member: str | None = None
    frame: int | None = None

    @property
    def file_display(self) -> str:
        """How messages name the file: the path, or ``archive.zip::member``."""
        return f"{self.path}::{self.member}" if self.member is not None else self.path

    @property
    def display(self) -> str:
        """How messages name the file, and the frame where there is one: ``path (frame 12)``."""
        return self.file_display if self.frame is None else f"{self.file_display} (frame {self.frame})"


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the volume, with a human-readable reason; ``series``: the
    readable label of the series it belongs to where its header was read (Series Number,
    Series Description, a one-way key; no patient identifier), else empty."""

    name: str
    reason: str
    kind: str
    series: str = ""


def skip_file(skipped: list[SkippedFile], name: str, reason: str, kind: str, series: str = "") -> None:
    """Record a skipped file with its reason and log it (INFO)."""
    logger.info("skipping %s: %s", name, reason)
    skipped.append(SkippedFile(name, reason, kind, series))


def list_folder(root: Path, config: ReaderConfig = ReaderConfig()) -> tuple[list[FileRef], list[SkippedFile]]:
    """All regular files under ``root`` (recursive, sorted), never leaving it.

    Symlinked folders are not entered; a symlinked file is kept only when it resolves
    inside ``root``. Special and oversized files are skipped with their reason; more than
    ``config.max_files`` entries raise :class:`~covidct.errors.ResourceLimitError`.
    """
    real_root = root.resolve()
    refs: list[FileRef] = []
    skipped: list[SkippedFile] = []

    def unlistable(exc: OSError) -> None:
        rel = Path(exc.filename or root).relative_to(root).as_posix() if exc.filename else "."
        skip_file(skipped, rel, f"folder cannot be listed ({exc.strerror})", SPECIAL)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable, followlinks=False):
        for dname in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, dname)):
                dirnames.remove(dname)
                rel = (Path(dirpath) / dname).relative_to(root).as_posix()
                skip_file(skipped, rel, "symlinked folder; not entered", UNSUPPORTED)
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            rel = path.relative_to(root).as_posix()
            problem = _entry_problem(path, root, real_root, config)
            if problem:
                skip_file(skipped, rel, *problem)
            else:
                refs.append(FileRef(rel, str(path)))
            check_file_count(str(root), len(refs) + len(skipped), config)
    return refs, skipped


def _entry_problem(path: Path, root: Path, real_root: Path, config: ReaderConfig) -> tuple[str, str] | None:
    """(reason, kind) when a folder entry must not be opened or parsed, else ``None``."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop (Python 3.11)
            looped = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
            return ("symlink loop; not followed" if looped else f"dangling symlink ({exc}); not followed"), SPECIAL
        if not target.is_relative_to(real_root):
            return f"symlink resolves outside {root}; not followed", UNSUPPORTED
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror}); not opened", SPECIAL
    kind = special_file_kind(info.st_mode)
    if kind:
        return f"{kind}, not a regular file; not opened", SPECIAL
    if not os.access(path, os.R_OK):
        return "not readable (permission denied); not opened", SPECIAL
    problem = file_size_problem(info.st_size, config)
    return (f"file of {problem}; not parsed", TOO_LARGE) if problem else None


def special_file_kind(mode: int) -> str | None:
    """What a non-regular file is (``"FIFO (named pipe)"``, ...), ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "special file"


def safe_member_name(archive: Path, member: str) -> str:
    """The member's POSIX path inside the archive, or :class:`UnsafeArchivePathError`."""
    name = member.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise UnsafeArchivePathError(
            f"{archive}: zip entry {member!r} points outside the archive's root; "
            "expected a relative path without '..'"
        )
    return "/".join(p for p in parts if p != ".")


def list_zip(archive: Path, config: ReaderConfig = ReaderConfig()) -> list[FileRef]:
    """All file entries of a zip archive (sorted), after checking every entry's path and
    the size limits of :func:`~covidct.preprocessing.io.limits.checked_zip_entries`."""
    infos = checked_zip_entries(archive, config)
    refs = [
        FileRef(safe_member_name(archive, info.filename), str(archive), info.filename)
        for info in infos
        if not info.is_dir()
    ]
    return sorted(refs, key=lambda r: r.name)


def open_regular(ref: FileRef, config: ReaderConfig) -> tuple[BinaryIO, int] | SkippedFile:
    """Open a file without blocking (a FIFO swapped in after listing) and check it is a
    regular file within the size budget: ``(file, size)`` or why it is skipped."""
    fd = os.open(ref.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    info = os.fstat(fd)
    kind = special_file_kind(info.st_mode)
    problem = file_size_problem(info.st_size, config)
    if kind or problem:
        os.close(fd)
        if kind:
            return SkippedFile(ref.name, f"{kind}, not a regular file; not read", SPECIAL)
        return SkippedFile(ref.name, f"file of {problem}; not parsed", TOO_LARGE)
    return os.fdopen(fd, "rb"), info.st_size
