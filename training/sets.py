"""Several public data sets under one data root: parsing, listing, preparing, describing.

A set entry of :class:`covidct.training.config.DataConfig` (``train_sets`` / ``validation_sets``) is
``"KIND:PATH[:TRANSFORM]"``: a source kind of :data:`covidct.training.config.DATA_KINDS` (not
``sets``/``phantom``), its folder relative to the data root, and for image kinds how the
stored images turn into the patient frame (:data:`covidct.training.image_sources.TRANSFORMS`).

:func:`prepare_set` loads and prepares every case of a set; images whose gray-to-HU map
cannot be estimated are skipped and listed with the reason (nothing is dropped silently);
:func:`data_report` summarises what was used and skipped per set (``data_report.json``).
:data:`KNOWN_SETS` describes the public sets by folder name (origin, licence) for the
model card; a hospital's own folders are described as user-supplied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from covidct.errors import ConfigError, DatasetError, GrayMapError
from covidct.preprocessing.config import PipelineConfig
from covidct.training.datasets import PreparedPatient, prepare_patient
from covidct.training.patients import UNLABELLED, PatientCase

#: Origin and licence of the public sets, by folder name (the ``SOURCE.md`` of each).
KNOWN_SETS: dict[str, dict[str, str]] = {
    "mosmed-slices": {
        "name": "MosMedData slices",
        "origin": "Morozov et al., MosMedData: Chest CT Scans With COVID-19 Related Findings, arXiv:2005.06465 "
                  "(2020), Moscow outpatient centres; JPEG slices via Coronavirus-Visualization-Team/CVT_COVID-CT-CNN",
        "licence": "CC BY-NC-ND 3.0 (non-commercial)",
        "labels": "study label: COVID-19 (CT-1, CT-2) against no findings (CT-0); 8-bit wide window, mostly 8 mm",
    },
    "sars-cov-2-ct": {
        "name": "SARS-CoV-2 CT-scan dataset (one third)",
        "origin": "Soares et al., SARS-CoV-2 CT-scan dataset, medRxiv 10.1101/2020.04.24.20078584 (2020), "
                  "hospitals in Sao Paulo, Brazil; via Coronavirus-Visualization-Team/CVT_COVID-CT-CNN",
        "licence": "CC BY-NC-SA 4.0 (non-commercial)",
        "labels": "patient label: COVID-19 against other lung disease or none; 8-bit thorax crops, lung window",
    },
    "infection-masks/pseudo": {
        "name": "COVID-19 CT slices with Semi-Inf-Net pseudo masks",
        "origin": "Ma et al., COVID-19 CT Lung and Infection Segmentation Dataset (Zenodo 3757476; coronacases.org "
                  "and Radiopaedia), masks by the Semi-Inf-Net network; via DengPingFan/Inf-Net (MIT)",
        "licence": "Inf-Net repository MIT; images under the terms of their Zenodo record and original sites",
        "labels": "a network's soft infection masks (thresholded at 128): weaker than a radiologist's",
    },
    "infection-masks/doctor": {
        "name": "MedSeg COVID-19 CT segmentation (50 slices)",
        "origin": "MedSeg COVID-19 CT segmentation dataset (Italian Society of Medical and Interventional "
                  "Radiology), radiologists' infection masks; via DengPingFan/Inf-Net (MIT)",
        "licence": "Inf-Net repository MIT; images under the terms of MedSeg's publication",
        "labels": "radiologists' infection masks",
    },
    "covid-ct-md": {
        "name": "COVID-CT-MD sample series",
        "origin": "Afshar et al., COVID-CT-MD, Scientific Data 8, 121 (2021), doi:10.1038/s41597-021-00900-3",
        "licence": "CC BY 4.0",
        "labels": "radiologists' slice labels; diagnosis per patient",
    },
}


@dataclass(frozen=True)
class SetSpec:
    """One data set of a ``sets`` run: kind, folder (absolute), transform, name (relative path)."""

    kind: str
    path: Path
    transform: str
    name: str

    def describe(self) -> dict[str, str]:
        """Origin and licence (:data:`KNOWN_SETS`), or a user-supplied description."""
        known = KNOWN_SETS.get(self.name) or KNOWN_SETS.get(Path(self.name).name)
        base = known or {"name": self.name, "origin": "user-supplied", "licence": "as supplied", "labels": self.kind}
        return {**base, "kind": self.kind, "folder": self.name, "transform": self.transform}


def spec_of(data: Any) -> SetSpec:
    """The one set a :class:`covidct.training.config.DataConfig` of an image kind describes
    (``path``, ``transform``)."""
    if data.path is None:
        raise ConfigError(f"data kind {data.kind!r} needs a data path (--data-path)")
    return SetSpec(data.kind, Path(data.path), data.transform, Path(data.path).name)


def parse_set(entry: str, root: str | Path) -> SetSpec:
    """``"KIND:PATH[:TRANSFORM]"`` relative to ``root`` -> :class:`SetSpec` (ConfigError if malformed)."""
    from covidct.training.config import DATA_KINDS
    from covidct.training.image_sources import TRANSFORMS

    parts = entry.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"data set entry {entry!r}; expected KIND:PATH[:TRANSFORM]")
    kind, rel, transform = parts[0], parts[1], parts[2] if len(parts) == 3 else "none"
    if kind not in DATA_KINDS or kind in ("sets", "phantom"):
        raise ConfigError(f"data set entry {entry!r}: kind {kind!r}; expected one of "
                          f"{[k for k in DATA_KINDS if k not in ('sets', 'phantom')]}")
    if transform not in TRANSFORMS:
        raise ConfigError(f"data set entry {entry!r}: transform {transform!r}; expected one of {sorted(TRANSFORMS)}")
    return SetSpec(kind, Path(root) / rel, transform, rel.strip("/"))


def set_cases(spec: SetSpec, label_rule: str = "covid-vs-rest") -> list[PatientCase]:
    """The cases of one set (listing only; images are read when prepared)."""
    from covidct.training import file_sources, image_sources

    listers = {
        "mosmed-slices": image_sources.mosmed_slices_cases,
        "sars-cov-2-ct": image_sources.sars_cov_2_ct_cases,
        "infection-masks": image_sources.infection_mask_cases,
    }
    if spec.kind in listers:
        return listers[spec.kind](spec.path, spec.transform)
    if spec.kind == "dicom-csv":
        return file_sources.dicom_csv_cases(spec.path, label_rule=label_rule)
    if spec.kind == "tiff":
        return file_sources.tiff_cases(spec.path)
    if spec.kind == "nifti":
        return file_sources.nifti_cases(spec.path)
    raise ConfigError(f"data set {spec.name!r}: kind {spec.kind!r} has no lister")


@dataclass(frozen=True)
class PreparedSet:
    """A prepared set: its spec, prepared cases (network inputs), skipped cases with reasons."""

    spec: SetSpec
    patients: tuple[PreparedPatient, ...]
    skipped: tuple[dict[str, str], ...]
    listed: int


def prepare_set(spec: SetSpec, pipeline: PipelineConfig, task: str, *, slices: str = "all",
                seg_target: str = "infection", label_rule: str = "covid-vs-rest",
                progress: bool = False, cases: Sequence[PatientCase] | None = None) -> PreparedSet:
    """Load and prepare every case of ``spec`` (or the given ``cases`` of it); :class:`GrayMapError`
    cases are skipped and listed."""
    cases = list(set_cases(spec, label_rule) if cases is None else cases)
    from covidct.progress import progress as progress_bar

    prepared, skipped = [], []
    for case in progress_bar(cases, desc=f"prepare {spec.name}", unit="case", leave=False, disable=not progress):
        try:
            data = case.load()
        except GrayMapError as exc:
            skipped.append({"case": case.patient_id, "reason": str(exc)})
            continue
        prepared.append(prepare_patient(data, pipeline, task, slices=slices, seg_target=seg_target))
    if not prepared:
        raise DatasetError(f"{spec.path}: no usable case ({len(skipped)} skipped: "
                           f"{skipped[0]['reason'] if skipped else 'none listed'})")
    return PreparedSet(spec, tuple(prepared), tuple(skipped), len(cases))


def class_counts(patients: Sequence[PreparedPatient]) -> dict[str, int]:
    """Labelled slices per class name (``COVID-19`` / ``not COVID-19``)."""
    labels = np.concatenate([p.slice_labels for p in patients]) if patients else np.zeros(0, np.int8)
    return {"COVID-19": int((labels == 1).sum()), "not COVID-19": int((labels == 0).sum()),
            "unlabelled": int((labels == UNLABELLED).sum())}


def data_report(train: Sequence[PreparedSet], validation: Sequence[PreparedSet]) -> dict[str, Any]:
    """What every set contributed: listed, used, skipped (with reasons), slices per class."""
    def one(ps: PreparedSet, role: str) -> dict[str, Any]:
        return {**ps.spec.describe(), "role": role, "listed": ps.listed, "used": len(ps.patients),
                "groups": len({p.group_id for p in ps.patients}), "slices_per_class": class_counts(ps.patients),
                "skipped": list(ps.skipped)}

    return {"sets": [one(s, "train") for s in train] + [one(s, "validation") for s in validation]}
