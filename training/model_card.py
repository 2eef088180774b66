"""Model cards: what a checkpoint was trained on, how it was evaluated, what it is for.

Every checkpoint folder holds ``model_card.json`` beside ``weights.pt``. The exporter
refuses a checkpoint without one, copies it into the model repository and into the
ONNX file (``metadata_props`` key ``model_card``); the serving side returns the cards
with every answer, so a verdict of a demo model trained on synthetic phantoms never
looks like the verdict of a model trained on real patients.

Fields (JSON object, ``card_version`` 2; version 1 cards, without ``datasets``,
``limitations`` and ``licence``, still load):

- ``network`` (registry name), ``task`` (``classification``/``segmentation``);
- ``input``: ``size`` (px), ``channels``, ``hu_window`` ([min, max] HU), ``lung_crop``;
- ``training_data``: ``source_kind`` (``phantom``, ``lesion-insertion``, ``dicom-csv``,
  ``tiff``, ``nifti``, or ``none`` for weights saved without a training run),
  ``synthetic``, ``patients_per_class`` / ``slices_per_class`` (class name -> count),
  ``label_definition`` (a sentence), ``label_rule`` (dicom-csv only, else null);
- ``training_config``: the resolved :class:`covidct.training.config.TrainConfig` as a dict;
- ``evaluation``: patient-level k-fold figures when a k-fold run produced the model
  (and a vote-threshold pick when one was made), else null;
- ``intended_use`` (a sentence), ``demo`` (true when the training data are synthetic or
  not recorded), ``warning`` (the sentence to show beside every verdict:
  :data:`DEMO_WARNING` for synthetic data);
- ``datasets``: one entry per data set a recipe used (name, origin, licence, role
  train/validation, images used and skipped, slices per class), or null;
- ``limitations`` (sentences), ``licence`` (of the weights: what the data licences allow);
- ``weights_sha256`` (hex SHA-256 of ``weights.pt``), ``created_utc`` (ISO 8601).

This module imports no torch, so the serving side can read cards with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from covidct.errors import CheckpointError, ConfigError
from covidct.preprocessing.config import PipelineConfig
from covidct.preprocessing.config_json import JsonConfig

CARD_VERSION = 2
SUPPORTED_CARD_VERSIONS = (1, 2)
FILENAME = "model_card.json"
DEMO_WARNING = "Demo model trained on synthetic data; not for clinical use."
UNRECORDED_WARNING = "Model saved without a record of its training data; not for clinical use."
RESEARCH_WARNING = "Research model trained on {patients} patients; not validated for clinical use."
SYNTHETIC_KINDS = ("phantom", "lesion-insertion")
"""Source kinds whose positives (or all patients) are synthetic."""
UNRECORDED_KIND = "none"
DEMO_USE = "Demonstrating and testing the serving pipeline; not for clinical use."
RESEARCH_USE = (
    "Research on COVID-19 triage of chest CT series; not a medical device and not validated "
    "for clinical decisions."
)

LABEL_DEFINITIONS: dict[str, str] = {
    "phantom": (
        "Synthetic phantom slices: slice label 1 when a generated COVID-like lesion lies in the "
        "slice, else 0; patient label 1 for phantoms generated with lesions."
    ),
    "lesion-insertion": (
        "Real normal series (negatives) and copies with synthetic lesions inserted (positives): "
        "slice label 1 when an inserted lesion lies in the slice."
    ),
    "tiff": (
        "Every slice carries its patient's class-folder label (covid = 1, normal = 0): weak slice "
        "labels, only the patient-level results are meaningful."
    ),
    "nifti": "Slice label 1 when the infection mask has a foreground pixel in the slice, else 0.",
    "mosmed-slices": "Slice label = the study's: 1 COVID-19 (MosMed CT-1, CT-2), 0 no findings (CT-0).",
    "sars-cov-2-ct": "Slice label = the patient's: 1 COVID-19, 0 another lung disease or none.",
    "infection-masks": "Pixel label 1 inside the infection mask; slice label 1 when the mask has a pixel.",
    UNRECORDED_KIND: "No training data recorded.",
}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finite(value: Any) -> Any:
    """NaN/inf floats -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _finite(value.item())
    return value


def utc_now() -> str:
    """Current time as ISO 8601 UTC with a ``Z`` suffix, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class CardInput:
    """Network input: square ``size`` (px), ``channels``, HU window [min, max] mapped to [0, 1]."""

    size: int = 0
    channels: int = 1
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    lung_crop: bool = False


@dataclass(frozen=True)
class TrainingData:
    """What the network saw: source kind, class counts (patients, slices) and label meaning."""

    source_kind: str = UNRECORDED_KIND
    synthetic: bool = False
    patients_per_class: dict[str, int] = field(default_factory=dict)
    slices_per_class: dict[str, int] = field(default_factory=dict)
    label_definition: str = LABEL_DEFINITIONS[UNRECORDED_KIND]
    label_rule: str | None = None

    @property
    def num_patients(self) -> int:
        return int(sum(self.patients_per_class.values()))


@dataclass(frozen=True)
class ModelCard(JsonConfig):
    """The card of one checkpoint (see the module docstring for the fields)."""

    FILENAME: ClassVar[str] = FILENAME
    LABEL: ClassVar[str] = "model card"

    network: str = ""
    task: str = ""
    input: CardInput = field(default_factory=CardInput)
    training_data: TrainingData = field(default_factory=TrainingData)
    training_config: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    intended_use: str = DEMO_USE
    demo: bool = True
    warning: str = UNRECORDED_WARNING
    weights_sha256: str = ""
    created_utc: str = ""
    datasets: list[dict[str, Any]] | None = None
    limitations: list[str] | None = None
    licence: str | None = None
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if self.card_version not in SUPPORTED_CARD_VERSIONS:
            raise ConfigError(f"model card version {self.card_version!r} is not supported; expected one of "
                              f"{list(SUPPORTED_CARD_VERSIONS)}")
        if not self.network or self.task not in ("classification", "segmentation"):
            raise ConfigError(
                f"model card needs a network name and a task of classification/segmentation; "
                f"got network={self.network!r}, task={self.task!r}"
            )
        if not isinstance(self.demo, bool):
            raise ConfigError(f"model card field demo must be true or false; got {self.demo!r}")

    def to_dict(self) -> dict[str, Any]:
        return _finite(dataclasses.asdict(self))

    def summary(self) -> str:
        """One line, e.g. ``cnn6 (classification) trained on phantom data: 12 patients;
        DEMO - synthetic training data, not for clinical use``."""
        data = self.training_data
        head = f"{self.network} ({self.task})"
        train_sets = [d for d in (self.datasets or []) if d.get("role") == "train"]
        if data.source_kind == UNRECORDED_KIND:
            text = f"{head}: no training data recorded"
        elif train_sets:
            used = sum(int(d.get("used", 0)) for d in train_sets)
            text = f"{head} trained on {used} images of {', '.join(str(d.get('folder')) for d in train_sets)}"
        else:
            text = f"{head} trained on {data.source_kind} data: {data.num_patients} patients"
        auc = (self.evaluation or {}).get("slice_roc_auc")
        if isinstance(auc, (int, float)) and math.isfinite(auc):
            text += f"; {self.evaluation.get('method', 'k-fold')} slice AUC {auc:.2f}"
        dice = (self.evaluation or {}).get("dice")
        if isinstance(dice, (int, float)) and math.isfinite(dice):
            text += f"; validation Dice {dice:.2f}"
        if self.demo:
            why = "synthetic training data" if data.synthetic else "no recorded training data"
            text += f"; DEMO - {why}, not for clinical use"
        return text

    def with_weights(self, weights_sha256: str) -> "ModelCard":
        """The card for new weights: hash replaced, ``created_utc`` set to now."""
        return dataclasses.replace(self, weights_sha256=weights_sha256, created_utc=utc_now())

    def with_evaluation(self, **entries: Any) -> "ModelCard":
        """The card with ``entries`` merged into ``evaluation``."""
        return dataclasses.replace(self, evaluation={**(self.evaluation or {}), **entries})

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "ModelCard":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a model card is a JSON object; got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        missing = sorted({"network", "task", "training_data", "demo", "weights_sha256"} - set(data))
        if unknown or missing:
            raise ConfigError(
                f"{source}: model card keys unknown {unknown}, missing {missing}; expected {sorted(fields)}"
            )
        kwargs = dict(data)
        try:
            inp = dict(kwargs.get("input") or {})
            if "hu_window" in inp:
                inp["hu_window"] = tuple(inp["hu_window"])
            kwargs["input"] = CardInput(**inp)
            kwargs["training_data"] = TrainingData(**kwargs["training_data"])
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: malformed model card ({exc})") from exc


def training_data_record(
    source_kind: str,
    patients_per_class: Mapping[str, int],
    slices_per_class: Mapping[str, int],
    *,
    label_rule: str | None = None,
    label_definition: str | None = None,
) -> TrainingData:
    """A :class:`TrainingData` entry; the label definition defaults to the source kind's
    (dicom-csv: the label rule's, :data:`covidct.training.labels.LABEL_RULES`)."""
    if label_definition is None:
        if source_kind == "dicom-csv":
            from covidct.training.labels import LABEL_RULES

            label_definition = LABEL_RULES.get(label_rule or "", f"label rule {label_rule!r}")
        else:
            label_definition = LABEL_DEFINITIONS.get(source_kind, f"labels of a {source_kind} source")
    return TrainingData(
        source_kind=source_kind,
        synthetic=source_kind in SYNTHETIC_KINDS,
        patients_per_class={str(k): int(v) for k, v in patients_per_class.items()},
        slices_per_class={str(k): int(v) for k, v in slices_per_class.items()},
        label_definition=label_definition,
        label_rule=label_rule,
    )


def make_card(
    model_config: Any,
    pipeline: PipelineConfig,
    training_data: TrainingData,
    *,
    weights_sha256: str = "",
    training_config: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> ModelCard:
    """Card of a network (:class:`covidct.training.registry.ModelConfig`) deployed with ``pipeline``.

    ``demo`` is true when the data are synthetic or not recorded; ``intended_use`` and
    ``warning`` follow from it (a model trained on real data still carries a warning
    naming its number of training patients).
    """
    inp = pipeline.classifier_input if model_config.task == "classification" else pipeline.segmenter_input
    demo = training_data.synthetic or training_data.source_kind == UNRECORDED_KIND
    if demo:
        warning = DEMO_WARNING if training_data.synthetic else UNRECORDED_WARNING
    else:
        warning = RESEARCH_WARNING.format(patients=training_data.num_patients)
    return ModelCard(
        network=model_config.name,
        task=model_config.task,
        input=CardInput(
            size=int(model_config.input_size),
            channels=int(model_config.in_channels),
            hu_window=(float(pipeline.window.min_hu), float(pipeline.window.max_hu)),
            lung_crop=bool(inp.lung_crop),
        ),
        training_data=training_data,
        training_config=None if training_config is None else json.loads(json.dumps(_finite(training_config))),
        evaluation=evaluation,
        intended_use=DEMO_USE if demo else RESEARCH_USE,
        demo=demo,
        warning=warning,
        weights_sha256=weights_sha256,
        created_utc=utc_now(),
    )


def unrecorded_card(model_config: Any, pipeline: PipelineConfig, weights_sha256: str = "") -> ModelCard:
    """Card of weights saved outside a training run (``source_kind`` ``none``, demo)."""
    return make_card(model_config, pipeline, TrainingData(), weights_sha256=weights_sha256)


CLASS_NAMES = {"three-class": ("normal", "cap", "covid")}
BINARY_NAMES = ("negative", "positive")


def training_data_for_run(
    data: Any, train_ds: Any, patients: Sequence[Any], diagnoses: Mapping[str, str] | None = None
) -> TrainingData:
    """Model-card record of a training run: the slices of ``train_ds``
    (:class:`covidct.training.datasets.SliceDataset`) and the ``patients``
    (:class:`covidct.training.datasets.PreparedPatient`) they came from, counted by diagnosis
    where the source has one, else by patient label; ``data`` is the run's
    :class:`covidct.training.config.DataConfig`."""
    names = CLASS_NAMES.get(data.label_rule, BINARY_NAMES) if data.kind == "dicom-csv" else BINARY_NAMES
    diagnoses = diagnoses or {}
    per_patient = Counter(
        diagnoses.get(p.patient_id) or (names[p.label] if 0 <= p.label < len(names) else str(p.label))
        for p in patients
    )
    if train_ds.task == "classification":
        counts = Counter(int(v) for v in train_ds.labels.numpy())
        slices = {names[k] if 0 <= k < len(names) else str(k): v for k, v in sorted(counts.items())}
        unlabelled = sum(int((p.slice_labels < 0).sum()) for p in patients)  # -1 = unlabelled
        if unlabelled:
            slices["unlabelled (not used)"] = unlabelled
    else:
        fg = train_ds.masks.reshape(len(train_ds), -1).amax(dim=1) > 0
        slices = {f"with {data.seg_target}": int(fg.sum()), f"without {data.seg_target}": int((~fg).sum())}
    rule = data.label_rule if data.kind == "dicom-csv" else None
    return training_data_record(data.kind, dict(per_patient), slices, label_rule=rule)


def holdout_evaluation(
    report: dict[str, Any] | None, num_validation: int, method: str = "hold-out"
) -> dict[str, Any] | None:
    """Model-card figures of the validation patients of a hold-out (or one-fold) run
    (``report`` of :func:`covidct.training.evaluate.evaluate`), or None without validation
    patients."""
    if report is None:
        return None
    out: dict[str, Any] = {"method": method, "patients": num_validation}
    if report["task"] == "classification":
        vote = report["patient"]["pipeline"]
        out.update(slice_roc_auc=report["slice"]["roc_auc"], slices=report["slice"].get("n"),
                   vote_threshold=vote["vote_fraction"], patients_correct=vote["correct"])
    else:
        out.update(dice=report["all_slices"]["dice"])
    return out


def load_model_card(directory: str | Path) -> ModelCard:
    """The card of a checkpoint folder (or a ``model_card.json`` path).

    Raises :class:`CheckpointError` naming the path when the card is missing or malformed.
    """
    path = Path(directory)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint has no model card; retrain it with `python -m covidct.training train` "
            f"or write one with covidct.training.model_card.make_card(...).save(folder)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: model card is not valid JSON ({exc})") from exc
    try:
        return ModelCard.from_dict(data, source=str(path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def write_model_card(card: ModelCard, directory: str | Path) -> Path:
    """Write ``card`` as ``<directory>/model_card.json``; returns the path."""
    return card.save(Path(directory) / FILENAME)
