"""Losses, metrics, patient-level splits, augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from covidct.errors import ConfigError, DatasetError
from covidct.training.augment import AugmentConfig, augment_batch
from covidct.training.losses import dice_loss, focal_tversky_loss, make_loss
from covidct.training.metrics import classification_metrics, roc_auc, roc_curve, segmentation_metrics
from covidct.training.splits import holdout_split, patient_kfold


def test_focal_tversky_matches_hand_computation():
    logits = torch.tensor([[[[10.0, 10.0], [-10.0, -10.0]]]])  # p ~ [1, 1, 0, 0]
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # tp 1, fp 1, fn 1
    ti = (1 + 1) / (1 + 0.7 * 1 + 0.3 * 1 + 1)
    got = focal_tversky_loss(logits, target, smooth=1.0)
    assert got.item() == pytest.approx((1 - ti) ** 1.3, abs=1e-3)
    inv = focal_tversky_loss(logits, target, smooth=1.0, inverse_gamma=True)
    assert inv.item() == pytest.approx((1 - ti) ** (1 / 1.3), abs=1e-3)


def test_dice_loss_zero_for_perfect_prediction():
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1:3, 1:3] = 1
    logits = (target * 2 - 1) * 50
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_make_loss_checks_outputs():
    with pytest.raises(ConfigError, match="'cce' needs a network with num_outputs >= 2"):
        make_loss("cce", 1)
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        make_loss("hinge")
    loss = make_loss("cce", 2)(torch.tensor([[0.0, 5.0], [5.0, 0.0]]), torch.tensor([1.0, 0.0]))
    assert loss.item() < 0.01


def test_roc_auc_against_pair_counting():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # ties on purpose
    pos, neg = s[y == 1], s[y == 0]
    expected = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(y, s) == pytest.approx(expected)
    fpr, tpr, _ = roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected)
    assert math.isnan(roc_auc(np.ones(3), np.arange(3)))


def test_classification_and_segmentation_metrics():
    m = classification_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.6, 0.1]))
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 1)
    assert m["precision"] == m["recall"] == m["specificity"] == m["accuracy"] == 0.5
    truth = np.zeros((2, 4, 4), bool)
    truth[0, :2, :2] = True
    pred = np.zeros_like(truth)
    pred[0, :2, :1] = True
    s = segmentation_metrics(pred, truth)
    assert s["dice"] == pytest.approx(2 * 2 / (2 * 2 + 2))
    assert s["pixel_precision"] == 1.0 and s["pixel_recall"] == 0.5 and s["dice_all_background"] == 0.0


def test_kfold_never_shares_a_patient():
    ids = [f"p{i}" for i in range(23) for _ in range(5)]  # 5 slices per patient
    labels = [int(i % 3 == 0) for i in range(23) for _ in range(5)]
    folds = patient_kfold(ids, 5, labels=labels, seed=3)
    seen = []
    for fold in folds:
        assert not set(fold.train) & set(fold.validation)
        assert set(fold.train) | set(fold.validation) == set(ids)
        assert any(int(p[1:]) % 3 == 0 for p in fold.validation)  # stratified
        seen.extend(fold.validation)
    assert sorted(seen) == sorted(set(ids))
    hold = holdout_split(ids, 0.25, labels=labels)
    assert not set(hold.train) & set(hold.validation)


def test_split_errors():
    with pytest.raises(DatasetError, match="3 patients cannot be split into k=5 folds"):
        patient_kfold(["a", "b", "c"], 5)
    with pytest.raises(DatasetError, match="patient 'a' has two patient labels"):
        patient_kfold(["a", "a", "b"], 2, labels=[0, 1, 0])


def test_augmentation_moves_image_and_mask_together():
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, 8:14, 5:20] = 1.0
    image = mask.clone()
    cfg = AugmentConfig(rotation_deg=180.0, zoom=0.05, shift=0.05)
    out_img, out_mask = augment_batch(image, mask, cfg, g)
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_mask, mask)
    # where the mask is set the image (same content, bilinear) is bright, and vice versa
    assert out_img[out_mask == 1].mean() > 0.7
    assert out_img[out_mask == 0].mean() < 0.1
