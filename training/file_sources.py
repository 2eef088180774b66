"""File-based training sources in the public data sets' layouts.

- :func:`dicom_csv_cases` (COVID-CT-MD): ``root/labels.csv`` with columns ``patient``,
  ``sop_file``, ``infected`` (1/0/blank = not labelled), ``diagnosis`` (``COVID-19``,
  ``CAP`` or ``Normal``, any case; one per patient) and optionally ``slice_rank``
  (position after sorting, checked); one DICOM folder per patient, ``root/<patient>/``.
  A label rule (:data:`LABEL_RULES`, ``DataConfig.label_rule``) turns diagnosis +
  ``infected`` into slice labels:

  - ``covid-vs-rest`` (default): a COVID-19 patient's infected slices 1, its
    uninfected slices 0, its unlabelled slices stay unlabelled (-1); every slice of a
    CAP or Normal patient is 0 (a Normal series' blank ``infected`` means 0 by
    diagnosis). Patient label 1 for COVID-19.
  - ``three-class``: 0 normal / 1 CAP / 2 COVID-19 per slice: infected slices of a CAP
    patient 1, of a COVID-19 patient 2, uninfected slices and every Normal slice 0,
    unlabelled slices of CAP/COVID-19 patients stay unlabelled. Patient label 0/1/2.
    The registered classifiers have one or two outputs, so training refuses this rule
    (``ConfigError``); it is there for listing and checking data.
  - ``slice-labels`` (ours): ``infected`` as is, no diagnosis needed; patient label 1
    when any slice is infected (CAP infection counts as positive).

  Label errors raise :class:`DatasetError` naming the file, line and value: an unknown
  diagnosis, a blank diagnosis or no ``diagnosis`` column where the rule needs one, two
  diagnoses for one patient, ``infected=1`` on a Normal patient.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from covidct.errors import ConfigError, DatasetError
from covidct.training.labels import (
    ACCEPTED_DIAGNOSES,
    DEFAULT_LABEL_RULE,
    DIAGNOSES,
    DIAGNOSIS_NAMES,
    LABEL_RULES,
)
from covidct.training.patients import UNLABELLED, PatientCase, PatientData

POSITIVE_CLASSES = {"covid", "covid19", "covid-19", "positive", "1"}
NEGATIVE_CLASSES = {"normal", "negative", "non-covid", "noncovid", "0"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")

RULES_NEEDING_DIAGNOSIS = ("covid-vs-rest", "three-class")


def _read(path: Path):
    from covidct.preprocessing.io.series_reader import read_series

    return read_series(path)


# ------------------------------------------------------------------ DICOM + labels.csv
@dataclass(frozen=True)
class _Row:
    line: int
    sop: str
    infected: int
    rank: int | None
    diagnosis: str  # canonical: covid, cap, normal, or "" when the file has none


def _canonical_diagnosis(value: str, csv_path: Path, line: int) -> str:
    key = value.strip().lower()
    if key not in DIAGNOSES:
        raise DatasetError(
            f"{csv_path} line {line}: unknown diagnosis {value!r}; accepted values (any case): "
            f"{sorted(ACCEPTED_DIAGNOSES)}"
        )
    return DIAGNOSES[key]


def _parse_labels_csv(csv_path: Path, label_rule: str) -> dict[str, list[_Row]]:
    """patient -> rows; diagnoses checked as the label rule needs them."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DatasetError(
            f"{csv_path}: labels file not found (expected labels.csv beside the patient folders)"
        ) from exc
    reader = csv.DictReader(text.splitlines())
    columns = set(reader.fieldnames or [])
    required = {"patient", "sop_file", "infected"}
    missing = required - columns
    if missing:
        raise DatasetError(f"{csv_path}: missing columns {sorted(missing)}; found {reader.fieldnames}")
    needs_diagnosis = label_rule in RULES_NEEDING_DIAGNOSIS
    if needs_diagnosis and "diagnosis" not in columns:
        raise DatasetError(
            f"{csv_path}: missing column 'diagnosis' needed by label rule {label_rule!r} (values "
            f"{sorted(ACCEPTED_DIAGNOSES)}); found {reader.fieldnames}; label rule 'slice-labels' reads "
            f"files without diagnoses"
        )
    rows: dict[str, list[_Row]] = {}
    for line, row in enumerate(reader, start=2):
        value = (row["infected"] or "").strip()
        if value not in ("", "0", "1"):
            raise DatasetError(f"{csv_path} line {line}: infected must be 0, 1 or blank; got {value!r}")
        rank = (row.get("slice_rank") or "").strip()
        raw_diagnosis = (row.get("diagnosis") or "").strip()
        if needs_diagnosis and not raw_diagnosis:
            raise DatasetError(
                f"{csv_path} line {line}: blank diagnosis; label rule {label_rule!r} needs one of "
                f"{sorted(ACCEPTED_DIAGNOSES)}"
            )
        diagnosis = _canonical_diagnosis(raw_diagnosis, csv_path, line) if raw_diagnosis else ""
        rows.setdefault(row["patient"].strip(), []).append(
            _Row(line, row["sop_file"].strip(), UNLABELLED if value == "" else int(value),
                 int(rank) if rank else None, diagnosis)
        )
    if not rows:
        raise DatasetError(f"{csv_path}: no label rows")
    for pid, patient_rows in rows.items():
        _check_patient_rows(pid, patient_rows, csv_path)
    return rows


def patient_diagnoses(csv_path: str | Path) -> dict[str, str]:
    """Patient -> diagnosis (``"COVID-19"``, ``"CAP"``, ``"Normal"``, or ``""`` when the file
    has none) of a COVID-CT-MD ``labels.csv``; the same checks as training (DatasetError)."""
    rows = _parse_labels_csv(Path(csv_path), "slice-labels")
    return {
        pid: DIAGNOSIS_NAMES.get(next((r.diagnosis for r in patient_rows if r.diagnosis), ""), "")
        for pid, patient_rows in rows.items()
    }


def _check_patient_rows(pid: str, rows: list[_Row], csv_path: Path) -> None:
    """One diagnosis per patient; no infected slice in a normal patient."""
    first = next((r for r in rows if r.diagnosis), None)
    for r in rows:
        if first is not None and r.diagnosis != first.diagnosis:
            here = DIAGNOSIS_NAMES.get(r.diagnosis, "")
            raise DatasetError(
                f"{csv_path} line {r.line}: patient {pid!r} has two diagnoses: {here!r} here and "
                f"{DIAGNOSIS_NAMES[first.diagnosis]!r} on line {first.line}; one diagnosis per patient "
                f"(accepted values: {list(ACCEPTED_DIAGNOSES)})"
            )
        if r.diagnosis == "normal" and r.infected == 1:
            raise DatasetError(
                f"{csv_path} line {r.line}: infected=1 on slice {pid}/{r.sop} of a Normal patient; "
                f"accepted values for a Normal patient: 0 or blank"
            )


def slice_label(rule: str, diagnosis: str, infected: int) -> int:
    """Training label of one slice under ``rule`` (see :data:`LABEL_RULES`).

    diagnosis: ``covid``/``cap``/``normal`` (or ``""``); infected: 1, 0 or ``UNLABELLED``.
    Returns 0/1 (binary rules), 0/1/2 (three-class), or ``UNLABELLED``.
    """
    if rule == "covid-vs-rest":
        return infected if diagnosis == "covid" else 0
    if rule == "three-class":
        if diagnosis == "normal":
            return 0
        if infected == UNLABELLED:
            return UNLABELLED
        return infected * (2 if diagnosis == "covid" else 1)
    return infected


def patient_label(rule: str, diagnosis: str, rows: list[_Row]) -> int:
    """Patient label under ``rule``: covid-vs-rest 1 for COVID-19; three-class 0 normal /
    1 CAP / 2 COVID-19; slice-labels 1 when any slice is infected."""
    if rule == "covid-vs-rest":
        return int(diagnosis == "covid")
    if rule == "three-class":
        return {"normal": 0, "cap": 1, "covid": 2}[diagnosis]
    return int(any(r.infected == 1 for r in rows))


def _dicom_loader(folder: Path, pid: str, label: int, rows: list[_Row], csv_path: Path,
                  rule: str) -> Callable[[], PatientData]:
    diagnosis = rows[0].diagnosis

    def load() -> PatientData:
        volume = _read(folder)
        index = {name: i for i, name in enumerate(volume.source_names)}
        index.update({Path(name).name: i for i, name in enumerate(volume.source_names)})
        # slices without a row keep the label their diagnosis implies (0 for non-COVID
        # patients under covid-vs-rest), else they stay unlabelled
        labels = np.full(volume.hu.shape[0], slice_label(rule, diagnosis, UNLABELLED), np.int8)
        for r in rows:
            if r.sop not in index:
                raise DatasetError(
                    f"{csv_path} line {r.line}: label for unknown slice {pid}/{r.sop} "
                    f"(not part of the series read from {folder})"
                )
            i = index[r.sop]
            if r.rank is not None and r.rank != i:
                raise DatasetError(
                    f"{csv_path} line {r.line}: {pid}/{r.sop} has slice_rank {r.rank} but is slice {i} "
                    f"after sorting by position"
                )
            labels[i] = slice_label(rule, diagnosis, r.infected)
        return PatientData(pid, label, volume.hu, tuple(volume.spacing_mm), labels)

    return load


def dicom_csv_cases(
    root: str | Path, labels_file: str = "labels.csv", *, label_rule: str = DEFAULT_LABEL_RULE
) -> list[PatientCase]:
    """COVID-CT-MD layout: ``root/labels.csv`` + ``root/<patient>/`` DICOM folders.

    ``label_rule`` maps each patient's diagnosis and the slices' ``infected`` values to
    training labels (:data:`LABEL_RULES`). Raises :class:`DatasetError` for layout and
    label problems (naming the file, line, value and the accepted values) and
    :class:`ConfigError` for an unknown rule.
    """
    if label_rule not in LABEL_RULES:
        raise ConfigError(f"unknown label_rule {label_rule!r}; expected one of {sorted(LABEL_RULES)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found")
    csv_path = root / labels_file
    rows = _parse_labels_csv(csv_path, label_rule)
    cases = []
    for pid in sorted(rows):
        folder = root / pid
        if not folder.is_dir():
            raise DatasetError(f"{csv_path}: patient {pid!r} has labels but no folder {folder}")
        files = {p.name for p in folder.iterdir() if p.is_file()}
        if not files:
            raise DatasetError(f"{folder}: empty patient folder")
        for r in rows[pid]:
            if Path(r.sop).name not in files:
                raise DatasetError(f"{csv_path} line {r.line}: label for unknown file {pid}/{r.sop}")
        diagnosis = rows[pid][0].diagnosis
        label = patient_label(label_rule, diagnosis, rows[pid])
        loader = _dicom_loader(folder, pid, label, rows[pid], csv_path, label_rule)
        cases.append(PatientCase(pid, label, loader, diagnosis=DIAGNOSIS_NAMES.get(diagnosis, "")))
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
