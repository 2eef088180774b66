"""Patient-level splits: no patient ever contributes slices to two folds.

``patient_kfold`` splits the *unique patient ids* into k folds, stratified by the
patient label when given (positives and negatives dealt round-robin after a seeded
shuffle), and returns per fold the train and validation patient ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from covidct.errors import DatasetError


@dataclass(frozen=True)
class Fold:
    """One fold: sorted patient ids for training and validation (disjoint)."""

    index: int
    train: tuple[str, ...]
    validation: tuple[str, ...]


def patient_kfold(
    patient_ids: Sequence[str],
    k: int = 5,
    *,
    labels: Sequence[int] | None = None,
    seed: int = 0,
) -> list[Fold]:
    """k patient-level folds over the unique ``patient_ids``.

    ``labels`` (one per entry of ``patient_ids``; repeated ids must repeat their label)
    stratifies the folds. Raises DatasetError for k < 2, fewer patients than folds, or
    inconsistent labels.
    """
    if k < 2:
        raise DatasetError(f"k-fold split needs k >= 2; got k={k}")
    label_of: dict[str, int] = {}
    for i, pid in enumerate(patient_ids):
        lab = 0 if labels is None else int(labels[i])
        if label_of.setdefault(pid, lab) != lab:
            raise DatasetError(f"patient {pid!r} has two patient labels ({label_of[pid]} and {lab})")
    unique = sorted(label_of)
    if len(unique) < k:
        raise DatasetError(f"{len(unique)} patients cannot be split into k={k} folds")
    rng = np.random.default_rng(seed)
    assignment: dict[str, int] = {}
    offset = 0
    for lab in sorted(set(label_of.values())):
        group = [p for p in unique if label_of[p] == lab]
        rng.shuffle(group)
        for j, pid in enumerate(group):
            assignment[pid] = (j + offset) % k
        offset += len(group)
    folds = []
    for f in range(k):
        val = tuple(sorted(p for p in unique if assignment[p] == f))
        train = tuple(sorted(p for p in unique if assignment[p] != f))
        folds.append(Fold(f, train, val))
    return folds


def holdout_split(
    patient_ids: Sequence[str],
    validation_fraction: float = 0.2,
    *,
    labels: Sequence[int] | None = None,
    seed: int = 0,
) -> Fold:
    """One stratified patient-level train/validation split (fold 0 of ~1/fraction folds)."""
    if not 0.0 < validation_fraction < 1.0:
        raise DatasetError(f"validation_fraction must be in (0, 1); got {validation_fraction}")
    k = max(2, int(round(1.0 / validation_fraction)))
    return patient_kfold(patient_ids, k, labels=labels, seed=seed)[0]
