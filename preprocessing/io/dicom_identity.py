"""One patient and one study per input, compared without keeping an identifier.

Each CT image file's Patient ID (0010,0020), Patient's Name (0010,0010), Patient's Birth
Date (0010,0030) and Study Instance UID (0020,000D) are reduced to sha256 digests as the
header is read; the values themselves are neither stored, logged nor put in a message.
A value absent from a file is not compared. Two distinct digests of one attribute among
the files of an input raise :class:`~covidct.errors.MixedPatientsError`, which names files
and counts, never the identifiers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom

from covidct.errors import MixedPatientsError, dicom_tag

#: (keyword, label, tag, what differs) in the order they are compared.
IDENTITY_ATTRIBUTES = (
    ("PatientID", "Patient ID", dicom_tag(0x0010, 0x0020), "patients"),
    ("PatientName", "Patient's Name", dicom_tag(0x0010, 0x0010), "patients"),
    ("PatientBirthDate", "Patient's Birth Date", dicom_tag(0x0010, 0x0030), "patients"),
    ("StudyInstanceUID", "Study Instance UID", dicom_tag(0x0020, 0x000D), "studies"),
)


@dataclass(frozen=True)
class Identity:
    """sha256 hex digests of the attributes of :data:`IDENTITY_ATTRIBUTES` (``None``: absent)."""

    digests: tuple[str | None, ...]


def identity_of(ds: pydicom.Dataset) -> Identity:
    """The digests of one data set's patient and study attributes."""
    return Identity(tuple(_digest(ds.get(keyword)) for keyword, *_ in IDENTITY_ATTRIBUTES))


def _digest(value: object) -> str | None:
    text = "" if value is None else str(value).strip().rstrip("^ ").strip()
    if not text:
        return None
    return hashlib.sha256(text.upper().encode("utf-8", "surrogateescape")).hexdigest()


def check_one_patient(source: str, files: Sequence[tuple[str, Identity]]) -> None:
    """:class:`MixedPatientsError` unless every attribute has one digest among ``files``
    (``(display name, identity)`` pairs of the CT image files of one input)."""
    for index, (_, label, tag, what) in enumerate(IDENTITY_ATTRIBUTES):
        first_file: dict[str, str] = {}
        for name, identity in files:
            digest = identity.digests[index]
            if digest is not None:
                first_file.setdefault(digest, name)
        if len(first_file) > 1:
            a, b = list(first_file.values())[:2]
            raise MixedPatientsError(
                f"{source}: the {len(files)} CT image files belong to {len(first_file)} distinct {what} "
                f"({label} {tag} differs, e.g. between {a} and {b}); expected one patient and one study "
                "per input (values compared as sha256 digests, not shown)"
            )
