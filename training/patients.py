"""Training patients: the in-memory record and the synthetic sources.

A source lists :class:`PatientCase` objects cheaply (ids, labels, checks of the layout)
and loads each volume only when ``case.load()`` is called. Every slice keeps the id of
its patient so that splits are made per patient (``group_id``: copies derived from one
real patient, e.g. lesion-inserted versions of one normal series, share a group and are
never split across train and validation).

File-based sources (DICOM + labels.csv, COVID-CTset TIFF, NIfTI with masks) are in
:mod:`covidct.training.file_sources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from covidct.errors import DatasetError

UNLABELLED = -1


@dataclass(frozen=True)
class PatientData:
    """One patient series with its labels.

    hu: int16 ``[N, H, W]`` HU (ascending position). spacing_mm: (z, y, x) mm.
    slice_labels: int8 ``[N]``: 1 infected, 0 not, -1 unlabelled.
    infection_mask / lung_mask: bool ``[N, H, W]`` or None when the source has none.
    label: patient label (1 = COVID-19 positive).
    """

    patient_id: str
    label: int
    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    slice_labels: np.ndarray
    infection_mask: np.ndarray | None = None
    lung_mask: np.ndarray | None = None
    group_id: str = ""

    def __post_init__(self) -> None:
        n = self.hu.shape[0]
        if self.hu.ndim != 3:
            raise DatasetError(f"patient {self.patient_id}: hu must be [N, H, W]; got shape {self.hu.shape}")
        if self.slice_labels.shape != (n,):
            raise DatasetError(
                f"patient {self.patient_id}: {self.slice_labels.shape[0]} slice labels for {n} slices"
            )
        for name in ("infection_mask", "lung_mask"):
            mask = getattr(self, name)
            if mask is not None and mask.shape != self.hu.shape:
                raise DatasetError(
                    f"patient {self.patient_id}: {name} shape {mask.shape} differs from the "
                    f"image shape {self.hu.shape}"
                )

    @property
    def group(self) -> str:
        return self.group_id or self.patient_id


@dataclass(frozen=True)
class PatientCase:
    """A patient that can be loaded: id, split group, patient label, loader.

    diagnosis: the source's diagnosis name (``COVID-19``, ``CAP``, ``Normal``) where the
    source has one, else ``""`` (model cards count patients by it).
    """

    patient_id: str
    label: int
    load: Callable[[], PatientData]
    group_id: str = ""
    diagnosis: str = ""

    @property
    def group(self) -> str:
        return self.group_id or self.patient_id


def _phantom_loader(pid: str, label: int, num_slices: int, size: int, seed: int) -> Callable[[], PatientData]:
    def load() -> PatientData:
        from covidct.preprocessing.synthetic.phantom import make_phantom

        ph = make_phantom(num_slices=num_slices, size=size, covid=bool(label), seed=seed)
        return PatientData(
            patient_id=pid,
            label=label,
            hu=ph.volume.hu,
            spacing_mm=tuple(ph.volume.spacing_mm),
            slice_labels=np.asarray(ph.slice_labels, dtype=np.int8),
            infection_mask=np.asarray(ph.lesion_mask, dtype=bool),
            lung_mask=np.asarray(ph.lung_mask, dtype=bool),
        )

    return load


def phantom_cases(
    num_patients: int = 12, *, num_slices: int = 40, size: int = 128, seed: int = 0
) -> list[PatientCase]:
    """Synthetic phantom patients, alternately positive (even index) and negative.

    Patient ``i`` is ``make_phantom(num_slices, size, covid=i % 2 == 0, seed=seed*1000+i)``.
    """
    if num_patients < 2:
        raise DatasetError(f"phantom data needs at least 2 patients (one per class); got {num_patients}")
    cases = []
    for i in range(num_patients):
        label = 1 if i % 2 == 0 else 0
        pid = f"phantom{seed:03d}-{i:03d}{'p' if label else 'n'}"
        cases.append(PatientCase(pid, label, _phantom_loader(pid, label, num_slices, size, seed * 1000 + i)))
    return cases


def _insertion_loader(source: str, pid: str, copy: int, seed: int) -> Callable[[], PatientData]:
    def load() -> PatientData:
        from covidct.preprocessing.io.series_reader import read_series

        volume = read_series(source)
        if copy == 0:
            n = volume.hu.shape[0]
            return PatientData(
                patient_id=pid,
                label=0,
                hu=volume.hu,
                spacing_mm=tuple(volume.spacing_mm),
                slice_labels=np.zeros(n, np.int8),
                infection_mask=np.zeros(volume.hu.shape, bool),
                group_id=source,
            )
        from covidct.preprocessing.synthetic.lesion_insertion import insert_lesions

        ph = insert_lesions(volume, seed=seed)
        return PatientData(
            patient_id=pid,
            label=1,
            hu=ph.volume.hu,
            spacing_mm=tuple(ph.volume.spacing_mm),
            slice_labels=np.asarray(ph.slice_labels, dtype=np.int8),
            infection_mask=np.asarray(ph.lesion_mask, dtype=bool),
            lung_mask=np.asarray(ph.lung_mask, dtype=bool),
            group_id=source,
        )

    return load


def lesion_insertion_cases(sources: list[str], *, copies: int = 4, seed: int = 0) -> list[PatientCase]:
    """For every normal series in ``sources``: the series itself (negative) and ``copies``
    versions with lesions inserted (positive, seeds ``seed*1000 + k``). All of them share
    the series as split group."""
    if not sources:
        raise DatasetError("lesion insertion needs at least one normal series; got none")
    if copies < 1:
        raise DatasetError(f"insertion_copies must be >= 1; got {copies}")
    cases = []
    for src in sources:
        stem = src.rstrip("/").split("/")[-1]
        for k in range(copies + 1):
            pid = stem if k == 0 else f"{stem}+lesions{k}"
            cases.append(
                PatientCase(pid, 0 if k == 0 else 1, _insertion_loader(src, pid, k, seed * 1000 + k), group_id=src)
            )
    return cases
