"""Frozen training configuration and the papers' settings as named presets.

Resolution order: :class:`TrainConfig` defaults < preset (``--preset``) < explicit
command-line options. The resolved config is written as ``train_config.json`` into the
checkpoint folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from covidct.errors import ConfigError
from covidct.preprocessing.config_json import JsonConfig
from covidct.training.augment import AugmentConfig
from covidct.training.labels import DEFAULT_LABEL_RULE, LABEL_RULES

TRAIN_CONFIG_FILENAME = "train_config.json"
#: Sources of one layout each, and ``sets``: several of them under one data root (recipes).
IMAGE_KINDS = ("mosmed-slices", "sars-cov-2-ct", "infection-masks")
DATA_KINDS = ("phantom", "lesion-insertion", "dicom-csv", "tiff", "nifti", *IMAGE_KINDS, "sets")
OPTIMIZERS = ("adam", "nadam")
TRAIN_SLICES = ("selected", "all")


@dataclass(frozen=True)
class DataConfig:
    """Where the training patients come from.

    kind: ``phantom`` (synthetic, default), ``lesion-insertion`` (real normal series in
    ``path`` + inserted lesions), ``dicom-csv`` (COVID-CT-MD layout: ``path/labels.csv``
    + one DICOM folder per patient), ``tiff`` (COVID-CTset: ``path/<class>/<patient>/``
    16-bit TIFF), ``nifti`` (``path/images``, ``path/infection_masks``, optional
    ``path/lung_masks``; files paired by name); the 8-bit image layouts of
    :mod:`covidct.training.image_sources`: ``mosmed-slices`` and ``sars-cov-2-ct`` (``labels.csv`` with
    ``file,label``), ``infection-masks`` (``images/`` + ``masks/``); ``sets``: several
    sources under the data root ``path`` (``train_sets`` / ``validation_sets``).
    transform: how the stored images of an image kind turn into the patient frame
    (:data:`covidct.training.image_sources.TRANSFORMS`: ``none``, ``rot90``, ``transpose``, ...).
    train_sets / validation_sets (kind ``sets``): ``"KIND:PATH[:TRANSFORM]"`` entries, PATH
    relative to ``path``. Classifiers: with no validation set, each training set is held
    out in turn (leave-one-source-out) and the final network trains on all of them;
    segmenters validate on ``validation_sets`` (never trained on).
    phantom_*: synthetic patients (half positive), slices per patient, slice side (px).
    insertion_copies: lesion-inserted copies per normal series (plus the normal itself).
    seg_target: segmenter target mask, ``infection`` or ``lung``.
    label_rule: how ``dicom-csv`` diagnoses and ``infected`` values become slice labels
    (:data:`covidct.training.labels.LABEL_RULES`: ``covid-vs-rest`` (default),
    ``three-class``, ``slice-labels``); other kinds ignore it.
    """

    kind: str = "phantom"
    path: str | None = None
    phantom_patients: int = 12
    phantom_slices: int = 40
    phantom_size: int = 128
    insertion_copies: int = 4
    seg_target: str = "infection"
    label_rule: str = DEFAULT_LABEL_RULE
    transform: str = "none"
    train_sets: tuple[str, ...] = ()
    validation_sets: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Everything a training run needs besides the data files themselves.

    model: registry name; input_size/num_outputs/in_channels: None = registry default
    (in_channels 3 when ``mask_channels``). loss: a name of ``covidct.training.losses.LOSSES``
    (None = bce, cce for 2 outputs, focal_tversky for segmenters).
    train_slices: ``selected`` (open-lung slices, as served) or ``all``.
    empty_slice_fraction: fraction of segmenter slices without foreground kept
    (paper 004 trains on positive slices only: 0.0). lr_schedule: ``constant`` (the
    papers) or ``cosine`` (per epoch from ``lr`` down to 0, ours).
    validation_fraction: patient-level hold-out (0 = none); folds/fold: k-fold instead.
    """

    FILENAME: ClassVar[str] = TRAIN_CONFIG_FILENAME
    LABEL: ClassVar[str] = "training config"

    model: str = "cnn6"
    input_size: int | None = None
    num_outputs: int | None = None
    mask_channels: bool = False
    lung_crop: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 10
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    loss: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train_slices: str = "selected"
    empty_slice_fraction: float = 1.0
    validation_fraction: float = 0.25
    folds: int = 0
    fold: int = 0
    vote_fraction: float | None = None
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        if self.train_slices not in TRAIN_SLICES:
            raise ConfigError(f"train_slices must be one of {TRAIN_SLICES}; got {self.train_slices!r}")
        if self.data.kind not in DATA_KINDS:
            raise ConfigError(f"data.kind must be one of {DATA_KINDS}; got {self.data.kind!r}")
        if self.data.label_rule not in LABEL_RULES:
            raise ConfigError(f"data.label_rule must be one of {sorted(LABEL_RULES)}; got {self.data.label_rule!r}")
        if self.data.seg_target not in ("infection", "lung"):
            raise ConfigError(f"data.seg_target must be 'infection' or 'lung'; got {self.data.seg_target!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule must be 'constant' or 'cosine'; got {self.lr_schedule!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        if not 0.0 <= self.empty_slice_fraction <= 1.0:
            raise ConfigError(f"empty_slice_fraction must be in [0, 1]; got {self.empty_slice_fraction}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be cpu or cuda[:n]; got {self.device!r}")


# The papers' settings. Values a paper does not state are marked "(ours)".
PRESETS: dict[str, dict[str, Any]] = {
    # Paper 000: CNN6, 224x224, Adam, BCE, 25 epochs; lr/batch (ours): Keras defaults.
    "paper000": {
        "model": "cnn6", "input_size": 224, "optimizer": "adam", "lr": 1e-3,
        "loss": "bce", "epochs": 25, "batch_size": 32,
        "augment": {"rotation_deg": 10.0, "zoom": 0.1, "shift": 0.1},
    },
    # Paper 000 with the lung and infection masks as extra input channels.
    "paper000-masks": {
        "model": "cnn6", "input_size": 224, "mask_channels": True, "optimizer": "adam",
        "lr": 1e-3, "loss": "bce", "epochs": 25, "batch_size": 32,
        "augment": {"rotation_deg": 10.0, "zoom": 0.1, "shift": 0.1},
    },
    # Paper 002: ResNet50V2-FPN, 512x512, Nadam lr 1e-4, batch 14, CCE, 50 epochs,
    # flips, rotation 0-360, zoom 5%, shift 5%.
    "paper002": {
        "model": "resnet50v2_fpn", "input_size": 512, "num_outputs": 2, "optimizer": "nadam",
        "lr": 1e-4, "batch_size": 14, "loss": "cce", "epochs": 50,
        "augment": {"hflip": True, "vflip": True, "rotation_deg": 180.0, "zoom": 0.05, "shift": 0.05},
    },
    "paper002-resnet": {
        "model": "resnet50v2", "input_size": 512, "num_outputs": 2, "optimizer": "nadam",
        "lr": 1e-4, "batch_size": 14, "loss": "cce", "epochs": 50,
        "augment": {"hflip": True, "vflip": True, "rotation_deg": 180.0, "zoom": 0.05, "shift": 0.05},
    },
    # Paper 003 lung segmenter: Attention U-Net, focal Tversky, Adam, 50 epochs;
    # lr/batch/size (ours).
    "paper003-seg": {
        "model": "attention_unet", "input_size": 256, "optimizer": "adam", "lr": 1e-3,
        "loss": "focal_tversky", "epochs": 50, "batch_size": 8,
        "data": {"seg_target": "lung"}, "augment": {"rotation_deg": 10.0, "zoom": 0.05, "shift": 0.05},
    },
    # Paper 003 classifier: EfficientNet-B4 on lung-cropped slices, BCE, Adam lr 1e-4,
    # 100 epochs; batch (ours).
    "paper003-cls": {
        "model": "efficientnet_b4", "input_size": 380, "lung_crop": True, "optimizer": "adam",
        "lr": 1e-4, "loss": "bce", "epochs": 100, "batch_size": 8,
    },
    # Paper 004: light U-Net on slices with infection only (under-sampling the empty
    # ones); loss/lr/epochs (ours).
    "paper004": {
        "model": "unet", "input_size": 256, "optimizer": "adam", "lr": 1e-3, "loss": "bce_dice",
        "epochs": 50, "batch_size": 8, "empty_slice_fraction": 0.0,
        "data": {"seg_target": "infection"}, "train_slices": "all",
    },
    "paper004-fcn8s": {
        "model": "fcn8s", "input_size": 256, "optimizer": "adam", "lr": 1e-4, "loss": "bce_dice",
        "epochs": 50, "batch_size": 8, "empty_slice_fraction": 0.0,
        "data": {"seg_target": "infection"}, "train_slices": "all",
    },
    # Patient-level k-fold on a few real series in minutes on 2 CPU cores (ours): paper
    # 000's cnn6 at 128 px, dropout 0.2, 8 epochs with cosine decay, mild augmentation.
    "kfold-small": {
        "model": "cnn6", "input_size": 128, "model_options": {"dropout": 0.2}, "optimizer": "adam",
        "lr": 1e-3, "lr_schedule": "cosine", "loss": "bce", "epochs": 8, "batch_size": 16,
        "augment": {"vflip": False, "rotation_deg": 10.0, "zoom": 0.05, "shift": 0.05},
    },
    # The shipped classifier (ours): ImageNet-initialised EfficientNet-Lite0 on lung-cropped
    # slices of real chest CT (MosMed full slices, Sao Paulo thorax crops), 8-bit images mapped
    # to HU per image; validated leave-one-source-out, then trained on both.
    # python -m covidct.training train --preset real-classifier --data-path ../shared/data --out DIR
    "real-classifier": {
        "model": "efficientnet_lite0", "input_size": 224, "lung_crop": True, "optimizer": "adam",
        "lr": 3e-4, "weight_decay": 1e-5, "lr_schedule": "cosine", "loss": "bce", "epochs": 6, "batch_size": 16,
        "train_slices": "all",
        "augment": {"hflip": True, "vflip": False, "rotation_deg": 10.0, "zoom": 0.1, "shift": 0.05,
                    "intensity": 0.1},
        "data": {"kind": "sets", "train_sets": ["mosmed-slices:mosmed-slices", "sars-cov-2-ct:sars-cov-2-ct"]},
    },
    # The shipped segmenter (ours): U-Net over an ImageNet-initialised EfficientNet-Lite0 encoder,
    # trained on 20 volumes' pseudo masks, validated on 50 radiologist-masked MedSeg slices.
    # Both folders are stored a quarter turn off the patient frame (pseudo: rot90, doctor: transpose).
    "real-segmenter": {
        "model": "unet_lite0", "input_size": 256, "optimizer": "adam", "lr": 5e-4, "weight_decay": 1e-5,
        "lr_schedule": "cosine", "loss": "bce_dice", "epochs": 5, "batch_size": 8, "train_slices": "all",
        "empty_slice_fraction": 0.3,
        "augment": {"hflip": True, "vflip": False, "rotation_deg": 10.0, "zoom": 0.4, "shift": 0.1,
                    "intensity": 0.1},
        "data": {"kind": "sets", "train_sets": ["infection-masks:infection-masks/pseudo:rot90"],
                 "validation_sets": ["infection-masks:infection-masks/doctor:transpose"]},
    },
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_train_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then ``PRESETS[preset]``, then ``overrides`` (nested dicts merge)."""
    data = TrainConfig().to_dict()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        data = _merge(data, PRESETS[preset])
    data = _merge(data, overrides or {})
    return TrainConfig.from_dict(data, source=f"preset {preset}" if preset else "train config")
