"""File-based training sources in the public data sets' layouts.

- :func:`dicom_csv_cases` (COVID-CT-MD): ``root/labels.csv`` with columns ``patient``,
  ``sop_file``, ``infected`` (1/0/blank = unlabelled) and optionally ``slice_rank``
  (position after sorting, checked) and ``diagnosis`` (patient label: positive when it
  names COVID); one DICOM folder per patient, ``root/<patient>/``.
- :func:`tiff_cases` (COVID-CTset): ``root/<class>/<patient>/`` holding 16-bit TIFF
  slices directly or in series sub-folders (each series is one case, grouped by
  patient); the class folder gives the label (``covid``/``positive`` = 1,
  ``normal``/``negative`` = 0). The raw folders carry patient labels only, so every
  slice gets its patient's label (weak slice labels; the patient-level results are the
  meaningful ones).
- :func:`nifti_cases`: ``root/images/*.nii[.gz]`` paired by file name with
  ``root/infection_masks/`` (required) and ``root/lung_masks/`` (optional), e.g. the
  COVID-19-CT-Seg layout after renaming its folders. Slice label = any infection pixel.

Layout problems raise :class:`DatasetError` when the cases are listed, before any
volume is read: missing labels file, a label for an unknown file, empty folders.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np

from covidct.errors import DatasetError
from training.patients import UNLABELLED, PatientCase, PatientData

POSITIVE_CLASSES = {"covid", "covid19", "covid-19", "positive", "1"}
NEGATIVE_CLASSES = {"normal", "negative", "non-covid", "noncovid", "0"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _read(path: Path):
    from preprocessing.io.series_reader import read_series

    return read_series(path)


# ------------------------------------------------------------------ DICOM + labels.csv
def _parse_labels_csv(csv_path: Path) -> dict[str, list[tuple[int, str, int, int | None, str]]]:
    """patient -> [(line, sop_file, infected, slice_rank, diagnosis)]."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DatasetError(f"{csv_path}: labels file not found (expected labels.csv beside the patient folders)") from exc
    reader = csv.DictReader(text.splitlines())
    required = {"patient", "sop_file", "infected"}
    missing = required - set(reader.fieldnames or [])
    if missing:
        raise DatasetError(f"{csv_path}: missing columns {sorted(missing)}; found {reader.fieldnames}")
    rows: dict[str, list[tuple[int, str, int, int | None, str]]] = {}
    for line, row in enumerate(reader, start=2):
        value = (row["infected"] or "").strip()
        if value not in ("", "0", "1"):
            raise DatasetError(f"{csv_path} line {line}: infected must be 0, 1 or blank; got {value!r}")
        rank = (row.get("slice_rank") or "").strip()
        rows.setdefault(row["patient"].strip(), []).append(
            (
                line,
                row["sop_file"].strip(),
                UNLABELLED if value == "" else int(value),
                int(rank) if rank else None,
                (row.get("diagnosis") or "").strip(),
            )
        )
    if not rows:
        raise DatasetError(f"{csv_path}: no label rows")
    return rows


def _dicom_loader(folder: Path, pid: str, label: int, rows: list, csv_path: Path) -> Callable[[], PatientData]:
    def load() -> PatientData:
        volume = _read(folder)
        index = {name: i for i, name in enumerate(volume.source_names)}
        index.update({Path(name).name: i for i, name in enumerate(volume.source_names)})
        labels = np.full(volume.hu.shape[0], UNLABELLED, np.int8)
        for line, sop, infected, rank, _ in rows:
            if sop not in index:
                raise DatasetError(
                    f"{csv_path} line {line}: label for unknown slice {pid}/{sop} "
                    f"(not part of the series read from {folder})"
                )
            i = index[sop]
            if rank is not None and rank != i:
                raise DatasetError(
                    f"{csv_path} line {line}: {pid}/{sop} has slice_rank {rank} but is slice {i} "
                    f"after sorting by position"
                )
            labels[i] = infected
        return PatientData(pid, label, volume.hu, tuple(volume.spacing_mm), labels)

    return load


def dicom_csv_cases(root: str | Path, labels_file: str = "labels.csv") -> list[PatientCase]:
    """COVID-CT-MD layout: ``root/labels.csv`` + ``root/<patient>/`` DICOM folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found")
    csv_path = root / labels_file
    rows = _parse_labels_csv(csv_path)
    cases = []
    for pid in sorted(rows):
        folder = root / pid
        if not folder.is_dir():
            raise DatasetError(f"{csv_path}: patient {pid!r} has labels but no folder {folder}")
        files = {p.name for p in folder.iterdir() if p.is_file()}
        if not files:
            raise DatasetError(f"{folder}: empty patient folder")
        for line, sop, *_ in rows[pid]:
            if Path(sop).name not in files:
                raise DatasetError(f"{csv_path} line {line}: label for unknown file {pid}/{sop}")
        diagnoses = {r[4].lower() for r in rows[pid] if r[4]}
        if diagnoses:
            label = int(any("covid" in d for d in diagnoses))
        else:
            label = int(any(r[2] == 1 for r in rows[pid]))
        cases.append(PatientCase(pid, label, _dicom_loader(folder, pid, label, rows[pid], csv_path)))
    return cases


# ------------------------------------------------------------------ COVID-CTset TIFF
def _has_tiff(folder: Path) -> bool:
    return any(p.suffix.lower() in (".tif", ".tiff") for p in folder.iterdir() if p.is_file())


def _tiff_loader(folder: Path, pid: str, label: int, group: str) -> Callable[[], PatientData]:
    def load() -> PatientData:
        volume = _read(folder)
        labels = np.full(volume.hu.shape[0], label, np.int8)
        return PatientData(pid, label, volume.hu, tuple(volume.spacing_mm), labels, group_id=group)

    return load


def tiff_cases(root: str | Path) -> list[PatientCase]:
    """COVID-CTset layout: ``root/<class>/<patient>/[<series>/]*.tif``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DatasetError(f"{root}: empty folder (expected class folders such as covid/ and normal/)")
    cases = []
    for class_dir in class_dirs:
        name = class_dir.name.lower()
        if name in POSITIVE_CLASSES:
            label = 1
        elif name in NEGATIVE_CLASSES:
            label = 0
        else:
            raise DatasetError(
                f"{class_dir}: unknown class folder {class_dir.name!r}; expected one of "
                f"{sorted(POSITIVE_CLASSES | NEGATIVE_CLASSES)}"
            )
        patients = sorted(p for p in class_dir.iterdir() if p.is_dir())
        if not patients:
            raise DatasetError(f"{class_dir}: empty class folder (no patient folders)")
        for patient in patients:
            group = f"{class_dir.name}/{patient.name}"
            series = [patient] if _has_tiff(patient) else sorted(
                s for s in patient.iterdir() if s.is_dir() and _has_tiff(s)
            )
            if not series:
                raise DatasetError(f"{patient}: empty patient folder (no .tif slices)")
            for s in series:
                pid = group if s == patient else f"{group}/{s.name}"
                cases.append(PatientCase(pid, label, _tiff_loader(s, pid, label, group), group_id=group))
    return cases


# ------------------------------------------------------------------ NIfTI + masks
def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {_nifti_stem(p): p for p in sorted(folder.iterdir()) if p.name.endswith(NIFTI_SUFFIXES)}


def _nifti_loader(image: Path, infection: Path, lung: Path | None, pid: str) -> Callable[[], PatientData]:
    def load() -> PatientData:
        volume = _read(image)
        masks = []
        for path in (infection, lung):
            if path is None:
                masks.append(None)
                continue
            mask = _read(path).hu > 0
            if mask.shape != volume.hu.shape:
                raise DatasetError(f"{path}: mask shape {mask.shape} differs from image {image} {volume.hu.shape}")
            masks.append(mask)
        slice_labels = masks[0].any(axis=(1, 2)).astype(np.int8)
        label = int(slice_labels.any())
        return PatientData(pid, label, volume.hu, tuple(volume.spacing_mm), slice_labels, masks[0], masks[1])

    return load


def nifti_cases(
    root: str | Path,
    *,
    images: str = "images",
    infection_masks: str = "infection_masks",
    lung_masks: str = "lung_masks",
) -> list[PatientCase]:
    """NIfTI volumes with masks paired by file name (see the module docstring).

    The patient label is read from the infection mask, so listing loads it: the label
    is set to 1 here provisionally and replaced by the loaded data's label.
    """
    root = Path(root)
    image_files = _nifti_files(root / images)
    if not image_files:
        raise DatasetError(f"{root / images}: empty or missing folder (expected .nii/.nii.gz volumes)")
    infection_files = _nifti_files(root / infection_masks)
    lung_files = _nifti_files(root / lung_masks)
    for kind, files in ((infection_masks, infection_files), (lung_masks, lung_files)):
        unknown = sorted(set(files) - set(image_files))
        if unknown:
            raise DatasetError(f"{root / kind}: mask for unknown volume {unknown[0]!r} (no image of that name)")
    cases = []
    for stem, image in image_files.items():
        if stem not in infection_files:
            raise DatasetError(f"{image}: no infection mask {root / infection_masks / image.name}")
        loader = _nifti_loader(image, infection_files[stem], lung_files.get(stem), stem)
        cases.append(PatientCase(stem, -1, loader))
    return cases
