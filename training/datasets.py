"""Slice data sets: patient volumes -> network inputs, labels and masks.

Every slice goes through :func:`covidct.preprocessing.model_inputs.classifier_inputs` /
:func:`~covidct.preprocessing.model_inputs.segmenter_inputs`, the same function the Triton
``preprocess`` model calls (train/serve parity). The open-lung selection of paper 002
(:func:`covidct.preprocessing.slice_selection.select_open_lung_slices`) is run once per patient
on the whole volume; it decides which slices are trained on (``slices="selected"``) and
which are voted on in the patient-level evaluation.

Arrays: inputs float32 ``[K, C, S, S]`` (NCHW); masks float32 ``[K, 1, S, S]`` in
{0, 1}; labels float32 ``[K]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from covidct.errors import DatasetError, NoOpenLungError
from covidct.preprocessing.config import PipelineConfig
from covidct.preprocessing.lung_masks import lung_mask
from covidct.preprocessing.model_inputs import classifier_inputs, segmenter_inputs
from covidct.preprocessing.slice_resize import resize_bilinear
from covidct.preprocessing.slice_selection import select_open_lung_slices
from covidct.training.patients import UNLABELLED, PatientCase, PatientData


@dataclass(frozen=True)
class PreparedPatient:
    """One patient at network resolution.

    indices: int64 ``[K]`` volume indices of the prepared slices; selected: int32 ``[J]``
    volume indices of the open-lung slices (patient vote); inputs ``[K, C, S, S]``;
    slice_labels int8 ``[K]`` (-1 unlabelled); masks ``[K, 1, S, S]`` or None.
    """

    patient_id: str
    group_id: str
    label: int
    num_slices: int
    indices: np.ndarray
    selected: np.ndarray
    inputs: np.ndarray
    slice_labels: np.ndarray
    masks: np.ndarray | None


def resize_mask_stack(mask: np.ndarray, size: int) -> np.ndarray:
    """bool ``[K, H, W]`` -> float32 ``[K, 1, S, S]``: bilinear resampling (same geometry
    as the image) thresholded at 0.5."""
    if mask.shape[0] == 0:
        return np.zeros((0, 1, size, size), np.float32)
    res = resize_bilinear(mask.astype(np.float32), (size, size))
    return (res >= 0.5).astype(np.float32)[:, None]


def prepare_patient(
    data: PatientData,
    pipeline: PipelineConfig,
    task: str,
    *,
    slices: str = "selected",
    seg_target: str = "infection",
) -> PreparedPatient:
    """Select, normalise and resize one patient's slices for a ``task`` network.

    ``slices``: ``"selected"`` (open-lung slices) or ``"all"``. For segmentation the
    target is the infection mask (``seg_target="infection"``, required from the source)
    or the lung mask (from the source, else paper 000's HU-threshold lung mask).
    """
    if slices not in ("selected", "all"):
        raise DatasetError(f"slices must be 'selected' or 'all'; got {slices!r}")
    n = data.hu.shape[0]
    try:
        selected = np.asarray(select_open_lung_slices(data.hu, pipeline.selection).indices, dtype=np.int64)
    except NoOpenLungError:
        if slices == "selected":
            raise
        # a single 8-bit image or a crop without the paper's open-lung region: every slice is voted on
        selected = np.arange(n, dtype=np.int64)
    indices = selected if slices == "selected" else np.arange(n, dtype=np.int64)
    hu = data.hu[indices]
    masks = None
    if task == "classification":
        inputs = classifier_inputs(hu, pipeline) if len(indices) else np.zeros(
            (0, pipeline.classifier_input.channels, pipeline.classifier_input.size, pipeline.classifier_input.size),
            np.float32,
        )
    elif task == "segmentation":
        if pipeline.segmenter_input.lung_crop:
            raise DatasetError("segmenter training with lung_crop=True is not supported (targets are not cropped)")
        size = pipeline.segmenter_input.size
        inputs = segmenter_inputs(hu, pipeline) if len(indices) else np.zeros(
            (0, pipeline.segmenter_input.channels, size, size), np.float32
        )
        if seg_target == "infection":
            if data.infection_mask is None:
                raise DatasetError(
                    f"patient {data.patient_id}: the source has no infection masks to train a segmenter on"
                )
            target = data.infection_mask[indices]
        else:
            target = data.lung_mask[indices] if data.lung_mask is not None else lung_mask(hu, pipeline.masks)
        masks = resize_mask_stack(np.asarray(target, bool), size)
    else:
        raise DatasetError(f"unknown task {task!r}")
    return PreparedPatient(
        patient_id=data.patient_id,
        group_id=data.group,
        label=int(data.label),
        num_slices=n,
        indices=indices,
        selected=selected.astype(np.int32),
        inputs=inputs.astype(np.float32, copy=False),
        slice_labels=np.asarray(data.slice_labels, np.int8)[indices],
        masks=masks,
    )


def prepare_cases(
    cases: Iterable[PatientCase],
    pipeline: PipelineConfig,
    task: str,
    *,
    slices: str = "selected",
    seg_target: str = "infection",
    progress: bool = False,
) -> list[PreparedPatient]:
    """Load and prepare every case (volumes are dropped after preparation)."""
    cases = list(cases)
    if not cases:
        raise DatasetError("no patients to prepare (empty data set)")
    if progress:
        from covidct.progress import progress as progress_bar

        cases = progress_bar(cases, desc="prepare", unit="patient", leave=False)
    return [prepare_patient(c.load(), pipeline, task, slices=slices, seg_target=seg_target) for c in cases]


class SliceDataset(torch.utils.data.Dataset):
    """Concatenated slices of prepared patients (a map-style torch data set).

    ``inputs`` float32 ``[N, C, S, S]``; ``labels`` float32 ``[N]`` (classification) ;
    ``masks`` float32 ``[N, 1, S, S]`` (segmentation, else None); ``patient_ids`` per slice.
    Unlabelled slices are dropped for classification. ``empty_fraction`` < 1 keeps only
    that fraction of segmentation slices without foreground (seeded; paper 004: 0).
    """

    def __init__(
        self,
        patients: Sequence[PreparedPatient],
        task: str,
        *,
        empty_fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not patients:
            raise DatasetError("no patients for the slice data set")
        rng = np.random.default_rng(seed)
        inputs, labels, masks, pids = [], [], [], []
        for p in patients:
            keep = np.ones(len(p.indices), bool)
            if task == "classification":
                keep &= p.slice_labels != UNLABELLED
            elif p.masks is not None and empty_fraction < 1.0:
                empty = p.masks.reshape(len(p.indices), -1).max(axis=1) == 0
                keep &= ~empty | (rng.random(len(p.indices)) < empty_fraction)
            inputs.append(p.inputs[keep])
            labels.append(p.slice_labels[keep].astype(np.float32))
            if p.masks is not None:
                masks.append(p.masks[keep])
            pids.extend([p.patient_id] * int(keep.sum()))
        self.task = task
        self.inputs = torch.from_numpy(np.concatenate(inputs))
        self.labels = torch.from_numpy(np.concatenate(labels))
        self.masks = torch.from_numpy(np.concatenate(masks)) if task == "segmentation" else None
        self.patient_ids = tuple(pids)
        if len(self.patient_ids) == 0:
            raise DatasetError("the slice data set is empty (no labelled slices left)")

    def __len__(self) -> int:
        return len(self.patient_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        target = self.masks[i] if self.masks is not None else self.labels[i]
        return self.inputs[i], target

    def targets(self) -> torch.Tensor:
        """Labels ``[N]`` (classification) or masks ``[N, 1, S, S]`` (segmentation)."""
        return self.masks if self.masks is not None else self.labels
