"""Generate a deployable Triton model repository from two checkpoints.

The git folder ``model_repository/`` is the source layout (configs and ``model.py``
files, no weights). :func:`generate_repository`:

1. loads both checkpoints (:func:`covidct.training.checkpoint.load_checkpoint`) and checks that
   the classifier checkpoint's ``pipeline_config.json`` (the one that is deployed) fits
   the segmenter: same HU window and segmenter input, same masks/crop where the
   segmenter uses them, input size/channels matching its network;
2. copies the source tree into a temporary folder beside ``out_dir``;
3. exports each network to ``<model>/<version>/model.onnx`` (names from the runner
   model's ``config.pbtxt``, ONNX Runtime parity checked) and sets the concrete
   ``[C, S, S]`` dims in its config;
4. per profile: ``portable``: keeps the Python-backend runner models, copies
   ``weights.pt`` + ``model_config.json`` beside the ONNX (the ``KIND_GPU`` torch FP16
   runner loads them), ``KIND_CPU`` (or ``KIND_GPU`` with ``gpu=True``);
   ``container``: rewrites the runner models as ``onnxruntime_onnx`` with the TensorRT
   accelerator in FP16 (or ``tensorrt_plan`` when a plan is given), ``KIND_GPU``,
   ``model_warmup`` with a realistic slice count;
5. copies ``pipeline_config.json`` into every Python model's version folder that reads
   it, lists the files each needs in a ``required_files`` parameter, and sets the vote
   model's ``model_versions`` parameter (``classifier=cnn6:1:sha256:<12 hex of
   weights.pt>,segmenter=...``);
   model cards (:mod:`covidct.training.model_card`): each checkpoint must hold
   ``model_card.json`` describing its ``weights.pt`` (else :class:`CheckpointError`);
   the card is copied beside each runner's weights and into its ONNX metadata, and the
   vote model's version folder gets ``model_cards.json``
   (``{"classifier": <card>, "segmenter": <card>}``), which the vote step returns with
   every answer; with GPU instances (``gpu=True``, and always in the container profile)
   every model is ``KIND_GPU`` and the Python models take their inputs where they lie
   (``FORCE_CPU_ONLY_INPUT_TENSORS: "no"``), so the large tensors stay on the GPU from
   step to step;
6. validates the result (:mod:`covidct.export.validate`) and renames it into place. On any
   error the temporary folder is removed: no half-written repository is left.
"""

from __future__ import annotations

import dataclasses

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from covidct.errors import CheckpointError, ExportError
from covidct.export.config import (
    DEFAULT_SOURCE_REPOSITORY,
    ONNX_FILENAME,
    PIPELINE_CONFIG_MODELS,
    PLAN_FILENAME,
    PROFILES,
    RUNNER_MODELS,
    WEIGHTS_FILENAME,
    RepositoryOptions,
)
from covidct.export.pbtxt import CONFIG_FILENAME, leading_comments, read_config, set_dims, set_instance_kind
from covidct.export.pbtxt import latest_version_dir, set_parameter, single_io, write_config
from covidct.export.runner_configs import container_note, container_runner_config
from covidct.export.validate import REQUIRED_FILES_PARAMETER, check_repository
from covidct.preprocessing.config import PIPELINE_CONFIG_FILENAME

MODEL_CONFIG_FILENAME = "model_config.json"
MODEL_CARDS_FILENAME = "model_cards.json"
"""The vote model's file of both runners' model cards: ``{"classifier": {...}, "segmenter": {...}}``."""
VOTE_MODEL = "vote"
STEPS = ("checkpoints", "source", "classifier", "segmenter", "configs", "validate", "install")
"""Progress steps reported to the ``progress`` callback, in order."""


@dataclass(frozen=True)
class ModelRow:
    """One line of the summary table. size_bytes: the served weights file;
    parity_error: max |probability error| vs torch (None where not checked)."""

    model: str
    network: str
    format: str
    precision: str
    size_bytes: int
    parity_error: float | None
    note: str = ""


@dataclass(frozen=True)
class RepositoryReport:
    """What :func:`generate_repository` wrote."""

    path: Path
    profile: str
    rows: tuple[ModelRow, ...]
    model_versions: tuple[str, ...]
    card_summaries: tuple[str, ...] = ()
    """``"<model>: <ModelCard.summary()>"`` per runner model."""


@dataclass(frozen=True)
class _Checkpoint:
    directory: Path
    network: object
    model_config: object
    pipeline_config: object
    card: object
    weights_sha256: str


def _load(directory: str | Path, role: str) -> _Checkpoint:
    from covidct.export.onnx_export import checked_model_card
    from covidct.training.model_card import file_sha256
    from covidct.training.checkpoint import load_checkpoint

    directory = Path(directory)
    network, model_config, pipeline_config = load_checkpoint(directory)
    task = RUNNER_MODELS[role]
    if model_config.task != task:
        raise CheckpointError(
            f"{directory}: network {model_config.name!r} is a {model_config.task} network; "
            f"the {role} needs a {task} checkpoint"
        )
    sha = file_sha256(directory / WEIGHTS_FILENAME)
    card = checked_model_card(directory, model_config, sha)
    return _Checkpoint(directory, network, model_config, pipeline_config, card, sha)


def check_pipeline_compatible(classifier: _Checkpoint, segmenter: _Checkpoint) -> None:
    """The deployed (classifier's) pipeline config must reproduce the segmenter's inputs."""
    from covidct.training.checkpoint import check_pipeline_matches

    p, q = classifier.pipeline_config, segmenter.pipeline_config
    fields = ["window", "segmenter_input"]
    if q.segmenter_input.mask_channels:
        fields.append("masks")
    if q.segmenter_input.lung_crop:
        fields.append("crop")
    for name in fields:
        if getattr(p, name) != getattr(q, name):
            raise CheckpointError(
                f"{segmenter.directory / PIPELINE_CONFIG_FILENAME}: {name} {getattr(q, name)} differs "
                f"from the deployed {classifier.directory / PIPELINE_CONFIG_FILENAME}: {getattr(p, name)}"
            )
    check_pipeline_matches(segmenter.model_config, p, str(classifier.directory / PIPELINE_CONFIG_FILENAME))


def deployed_pipeline(classifier: _Checkpoint, segmenter: _Checkpoint):
    """The served pipeline config: the classifier's, with the segmenter's own infection threshold.

    Each threshold travels with the network it was chosen for: ``vote.slice_threshold`` and
    ``vote.positive_fraction`` with the classifier, ``vote.infection_threshold`` (the lesion
    burden's pixel threshold) with the segmenter.
    """
    p = classifier.pipeline_config
    threshold = segmenter.pipeline_config.vote.infection_threshold
    return dataclasses.replace(p, vote=dataclasses.replace(p.vote, infection_threshold=threshold))


def _header(model_dir: Path, profile: str) -> str:
    original = leading_comments(model_dir / CONFIG_FILENAME)
    note = f"Generated by `python -m covidct.export` (profile {profile}) from the source layout model_repository/."
    return f"{original}\n{note}" if original else note


def _add_required(config, files: list[str]) -> None:
    set_parameter(config, REQUIRED_FILES_PARAMETER, ",".join(files))


def _install_runner(
    model: str, ckpt: _Checkpoint, repo: Path, profile: str, plan: Path | None, options: RepositoryOptions
) -> tuple[ModelRow, str]:
    """Export one network into ``repo/model`` and configure it; returns its summary row
    and its ``model_versions`` entry."""
    from covidct.export.onnx_export import export_network
    from covidct.training.model_card import FILENAME as CARD_FILENAME

    model_dir = repo / model
    version = latest_version_dir(model_dir)
    config = read_config(model_dir)
    header = _header(model_dir, profile)
    sha = ckpt.weights_sha256
    result = export_network(
        ckpt.network,
        ckpt.model_config,
        ckpt.pipeline_config,
        version / ONNX_FILENAME,
        io=single_io(config),
        config=options.onnx,
        weights_sha256=sha,
        model_card=ckpt.card,
    )
    ckpt.card.save(version / CARD_FILENAME)
    for spec in (result.input, result.output):
        set_dims(config, spec.name, spec.dims)
    ckpt_name = ckpt.model_config.name
    entry = f"{model}={ckpt_name}:{version.name}:sha256:{sha[:12]}"
    if profile == "portable":
        shutil.copy2(ckpt.directory / WEIGHTS_FILENAME, version / WEIGHTS_FILENAME)
        shutil.copy2(ckpt.directory / MODEL_CONFIG_FILENAME, version / MODEL_CONFIG_FILENAME)
        _set_device(config, options.gpu)
        _add_required(config, [ONNX_FILENAME, WEIGHTS_FILENAME, MODEL_CONFIG_FILENAME, PIPELINE_CONFIG_FILENAME,
                               CARD_FILENAME])
        write_config(config, model_dir, header)
        precision = "FP16 (torch)" if options.gpu else "FP32"
        row = ModelRow(model, ckpt_name, "onnx in python", precision, result.size_bytes, result.parity.max_abs_error)
        return row, entry
    (version / "model.py").unlink(missing_ok=True)
    parity, note, size = result.parity.max_abs_error, "", result.size_bytes
    if plan is not None:
        parity, note = _plan_parity(plan, version / ONNX_FILENAME, result.output.name)
        shutil.copy2(plan, version / PLAN_FILENAME)
        (version / ONNX_FILENAME).unlink()
        size = (version / PLAN_FILENAME).stat().st_size
    new = container_runner_config(config, plan is not None, options)
    generated = f"Generated by `python -m covidct.export` (profile container) from model_repository/{model}."
    write_config(new, model_dir, generated + "\n" + container_note(plan is not None))
    fmt, precision = ("plan", "FP16 (TensorRT)") if plan else ("onnx + TRT EP", "FP16 (TensorRT)")
    return ModelRow(model, ckpt_name, fmt, precision, size, parity, note), entry


def _plan_parity(plan: Path, onnx_path: Path, output_name: str) -> tuple[float | None, str]:
    from covidct.errors import TensorRTUnavailableError
    from covidct.export.tensorrt_build import check_engine_parity

    try:
        report = check_engine_parity(plan, onnx_path, output_name)
    except TensorRTUnavailableError:
        return None, "plan parity not checked: TensorRT unavailable here"
    return report.max_abs_error, ""


def model_cards_document(ckpts: dict[str, _Checkpoint]) -> dict[str, dict]:
    """``{"classifier": <card dict>, "segmenter": <card dict>}`` (``model_cards.json``)."""
    return {role: ckpts[role].card.to_dict() for role in RUNNER_MODELS}


GPU_INPUTS_PARAMETER = "FORCE_CPU_ONLY_INPUT_TENSORS"
"""Python-backend model parameter: ``"no"`` hands inputs over where they lie (GPU memory stays on the GPU)."""


def _set_device(config, gpu: bool) -> None:
    """``KIND_GPU`` instances that take their inputs in GPU memory (DLPack), or ``KIND_CPU``."""
    set_instance_kind(config, "KIND_GPU" if gpu else "KIND_CPU")
    if gpu:
        set_parameter(config, GPU_INPUTS_PARAMETER, "no")


def _configure_python_models(repo: Path, pipeline_config, model_versions: list[str], profile: str,
                             cards: dict[str, dict], gpu: bool = False) -> None:
    for model in PIPELINE_CONFIG_MODELS:
        model_dir = repo / model
        if not (model_dir / CONFIG_FILENAME).is_file():
            raise ExportError(f"{model_dir}: the source repository lacks model {model!r}")
        version = latest_version_dir(model_dir)
        pipeline_config.save(version / PIPELINE_CONFIG_FILENAME)
        if model in RUNNER_MODELS:
            continue  # configured by _install_runner
        config = read_config(model_dir)
        required = [PIPELINE_CONFIG_FILENAME]
        if model == VOTE_MODEL:
            set_parameter(config, "model_versions", ",".join(model_versions))
            text = json.dumps(cards, indent=2, sort_keys=True) + "\n"
            (version / MODEL_CARDS_FILENAME).write_text(text, encoding="utf-8")
            required.append(MODEL_CARDS_FILENAME)
        _add_required(config, required)
        _set_device(config, gpu)
        write_config(config, model_dir, _header(model_dir, profile))


def _prepare_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir}: folder exists and is not empty (use overwrite / --overwrite)")


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished repository into place (replacing an existing folder)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def generate_repository(
    classifier_ckpt: str | Path,
    segmenter_ckpt: str | Path,
    out_dir: str | Path,
    profile: str = "portable",
    *,
    plans: dict[str, str | Path] | None = None,
    options: RepositoryOptions = RepositoryOptions(),
    source: str | Path = DEFAULT_SOURCE_REPOSITORY,
    progress: Callable[[str], None] | None = None,
) -> RepositoryReport:
    """Build the repository at ``out_dir``; see the module docstring.

    plans: ``{"classifier": path, "segmenter": path}`` TensorRT plans (container profile).
    progress: called with each finished step's name (:data:`STEPS`).
    """
    if profile not in PROFILES:
        raise ExportError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    plans = {k: Path(v) for k, v in (plans or {}).items()}
    unknown = sorted(set(plans) - set(RUNNER_MODELS))
    if unknown:
        raise ExportError(f"plans given for unknown models {unknown}; expected some of {sorted(RUNNER_MODELS)}")
    if plans and profile != "container":
        raise ExportError("TensorRT plans are served by the container profile only (--profile container)")
    for model, plan in plans.items():
        if not plan.is_file():
            raise ExportError(f"{plan}: TensorRT plan for {model} not found")
    source, out_dir = Path(source), Path(out_dir).absolute()
    if not source.is_dir():
        raise ExportError(f"{source}: source model repository not found")
    _prepare_target(out_dir, options.overwrite)
    report_step = progress or (lambda step: None)
    ckpts = {"classifier": _load(classifier_ckpt, "classifier"), "segmenter": _load(segmenter_ckpt, "segmenter")}
    check_pipeline_compatible(ckpts["classifier"], ckpts["segmenter"])
    report_step("checkpoints")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.onnx", "*.plan", "*.tmp", ".*")
        shutil.copytree(source, tmp, ignore=ignore, dirs_exist_ok=True)
        report_step("source")
        rows, versions = [], []
        for model in RUNNER_MODELS:
            row, entry = _install_runner(model, ckpts[model], tmp, profile, plans.get(model), options)
            rows.append(row)
            versions.append(entry)
            report_step(model)
        _configure_python_models(tmp, deployed_pipeline(ckpts["classifier"], ckpts["segmenter"]), versions, profile,
                                 model_cards_document(ckpts), gpu=options.gpu or profile == "container")
        report_step("configs")
        check_repository(tmp)
        report_step("validate")
        _install(tmp, out_dir)
        report_step("install")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summaries = tuple(f"{role}: {ckpts[role].card.summary()}" for role in RUNNER_MODELS)
    return RepositoryReport(out_dir, profile, tuple(rows), tuple(versions), summaries)


def build_repository(
    classifier_ckpt: str | Path,
    segmenter_ckpt: str | Path,
    out_dir: str | Path,
    profile: str = "portable",
    **kwargs,
) -> Path:
    """Programmatic entry (the demo calls it): :func:`generate_repository` -> its path."""
    return generate_repository(classifier_ckpt, segmenter_ckpt, out_dir, profile, **kwargs).path

