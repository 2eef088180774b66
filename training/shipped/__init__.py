"""The shipped checkpoints: networks trained on public real chest CT, served by default.

``classifier/``: ``efficientnet_lite0`` (ImageNet-initialised) trained by the
``real-classifier`` preset on MosMedData slices and the Sao Paulo SARS-CoV-2 CT-scan
images; ``segmenter/``: ``unet_lite0`` trained by the ``real-segmenter`` preset on the
Inf-Net pseudo masks, validated on MedSeg radiologist masks. Each folder is a checkpoint
(``weights.pt``, ``model_config.json``, ``pipeline_config.json``, ``model_card.json``)
with what the recipe wrote beside it (resolved training config, data report, report,
learning curves, run info). Research use only, not for clinical use: the model cards
name every data set and licence.

``python -m covidct.export``, ``covidct serve`` and ``covidct demo`` take these unless told
otherwise; the phantom-trained demo models (:mod:`covidct.training.demo_models`) stay behind an
explicit option.
"""

from __future__ import annotations

from pathlib import Path

from covidct.errors import CheckpointError

SHIPPED_DIR = Path(__file__).resolve().parent
ROLES = ("classifier", "segmenter")


def shipped_checkpoint(role: str) -> Path:
    """The shipped checkpoint folder of ``role`` (``classifier`` or ``segmenter``)."""
    if role not in ROLES:
        raise CheckpointError(f"shipped checkpoint role {role!r}; expected one of {ROLES}")
    path = SHIPPED_DIR / role
    if not (path / "weights.pt").is_file():
        raise CheckpointError(f"{path}: the shipped {role} checkpoint is missing (weights.pt not found)")
    return path
