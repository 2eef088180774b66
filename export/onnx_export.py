"""Checkpoint -> ONNX file with named tensors, a dynamic slice axis and a parity check.

The exported graph is ``network + probability head`` (:mod:`covidct.training.heads`):

- input ``<input name>`` float32 ``[slices, C, S, S]`` (NCHW; the slice axis is dynamic,
  named ``slices``; C and S fixed by the checkpoint's ``model_config.json``);
- output ``<output name>`` float32 ``[slices, 1]`` (classifier) or ``[slices, 1, S, S]``
  (segmenter), probabilities in [0, 1].

The tensor names come from the runner model's ``config.pbtxt`` in the source model
repository (``CLASSIFIER_INPUT`` -> ``PROBABILITY``, ``SEGMENTER_INPUT`` ->
``INFECTION_PROBABILITY``); nothing here spells them.

Exporter: torch 2.13's ``torch.export``-based exporter (``dynamo=True``) at opset 18,
weights inside the file (no external data; every network here is < 2 GB). It takes
1-8 s per network on 2 CPU cores; the legacy TorchScript exporter (``exporter=
"torchscript"``) is 5-10x faster but deprecated in torch >= 2.9, so it is only a
fallback. After export: ``onnx.checker.check_model(full_check=True)`` (with shape
inference), a check of the tensor names and dims, and ONNX Runtime vs torch parity on
fresh random inputs (:mod:`covidct.export.parity`).

The preprocessing config travels with the model twice: as ``pipeline_config.json``
beside the ``.onnx`` and as ONNX ``metadata_props`` (keys ``pipeline_config``,
``model_config``, ``weights_sha256``). So does the checkpoint's model card
(``model_card.json`` and key ``model_card``): a checkpoint without a card, or whose card
describes other weights, is not exported (:func:`checked_model_card`).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct.errors import CheckpointError, ExportError
from covidct.preprocessing.config import PIPELINE_CONFIG_FILENAME
from covidct.export.config import (
    DEFAULT_SOURCE_REPOSITORY,
    RUNNER_MODELS,
    WEIGHTS_FILENAME,
    OnnxExportConfig,
)
from covidct.export.parity import ParityReport, check_parity, onnxruntime_function, torch_function
from covidct.export.pbtxt import TensorSpec, read_config, single_io
from covidct.training.model_card import file_sha256

SLICE_AXIS_NAME = "slices"
PRODUCER = "covidct-triton export"


@dataclass(frozen=True)
class OnnxExportResult:
    """What :func:`export_checkpoint` wrote and measured."""

    path: Path
    model_name: str
    task: str
    input: TensorSpec
    output: TensorSpec
    opset: int
    size_bytes: int
    weights_sha256: str
    parity: ParityReport


def checked_model_card(directory: Path, model_config, weights_sha256: str):
    """The checkpoint's :class:`covidct.training.model_card.ModelCard`, checked against its
    network and ``weights.pt``; CheckpointError when missing, malformed or stale."""
    from covidct.training.model_card import FILENAME, load_model_card

    card = load_model_card(directory)
    if (card.network, card.task) != (model_config.name, model_config.task):
        raise CheckpointError(
            f"{directory / FILENAME}: the card describes {card.network!r} ({card.task}) but "
            f"model_config.json is {model_config.name!r} ({model_config.task})"
        )
    if card.weights_sha256 != weights_sha256:
        raise CheckpointError(
            f"{directory / FILENAME}: the card describes weights sha256 {card.weights_sha256[:12] or '(none)'}... "
            f"but {WEIGHTS_FILENAME} is {weights_sha256[:12]}...; retrain, or rewrite the card for these weights"
        )
    return card


def runner_model_name(task: str) -> str:
    """Triton model that serves a network of ``task`` (``classifier``/``segmenter``)."""
    for name, model_task in RUNNER_MODELS.items():
        if model_task == task:
            return name
    raise CheckpointError(f"no Triton model serves task {task!r}; known: {sorted(RUNNER_MODELS.values())}")


def runner_io(task: str, source: str | Path = DEFAULT_SOURCE_REPOSITORY) -> tuple[TensorSpec, TensorSpec]:
    """Input and output spec of the runner model of ``task`` in the source repository."""
    return single_io(read_config(Path(source) / runner_model_name(task)))


def exported_specs(
    io: tuple[TensorSpec, TensorSpec], model_config
) -> tuple[TensorSpec, TensorSpec]:
    """The runner specs with C and S fixed by ``model_config``.

    Raises :class:`CheckpointError` when the source config fixes a dim that the network
    contradicts (e.g. a 3-channel segmenter where the contract says 1 channel).
    """
    c, s = model_config.in_channels, model_config.input_size
    wanted_in = (-1, c, s, s)
    wanted_out = (-1, 1) if model_config.task == "classification" else (-1, 1, s, s)
    result = []
    for spec, wanted in zip(io, (wanted_in, wanted_out)):
        if len(spec.dims) != len(wanted):
            raise CheckpointError(
                f"network {model_config.name!r} ({model_config.task}) gives {spec.name} rank "
                f"{len(wanted)}; the model configuration declares {spec.describe()}"
            )
        for have, want in zip(spec.dims, wanted):
            if have != -1 and have != want:
                raise CheckpointError(
                    f"network {model_config.name!r} needs {spec.name} dims {list(wanted)}; "
                    f"the model configuration fixes {spec.describe()}"
                )
        result.append(TensorSpec(spec.name, spec.dtype, wanted))
    return result[0], result[1]


def _torch_export(model, sample, path: Path, inp: TensorSpec, out: TensorSpec, config: OnnxExportConfig) -> None:
    import torch

    kwargs = dict(input_names=[inp.name], output_names=[out.name], opset_version=config.opset)
    if config.exporter == "dynamo":
        slices = torch.export.Dim(SLICE_AXIS_NAME, min=1, max=config.max_slices)
        kwargs.update(dynamo=True, dynamic_shapes=({0: slices},), external_data=False, verbose=False)
    else:
        axes = {inp.name: {0: SLICE_AXIS_NAME}, out.name: {0: SLICE_AXIS_NAME}}
        kwargs.update(dynamo=False, dynamic_axes=axes)
    # The exporters log progress and deprecation notes; keep the CLI's output readable.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (sample,), str(path), **kwargs)
    except Exception as exc:  # the exporters raise many types; name the network
        raise ExportError(f"{path.name}: torch.onnx.export ({config.exporter}) failed: {exc}") from exc
    finally:
        logging.disable(previous)


def _check_graph(proto, path: Path, inp: TensorSpec, out: TensorSpec) -> None:
    """Names and dims of the exported graph must be exactly the configured ones."""
    for kind, tensors, spec in (("input", proto.graph.input, inp), ("output", proto.graph.output, out)):
        names = [t.name for t in tensors]
        if names != [spec.name]:
            raise ExportError(f"{path}: graph {kind}s are {names}; expected [{spec.name!r}]")
        dims = tensors[0].type.tensor_type.shape.dim
        got = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        if got != spec.dims:
            raise ExportError(f"{path}: {kind} {spec.name} has dims {list(got)}; expected {list(spec.dims)}")


def export_network(
    network,
    model_config,
    pipeline_config,
    out_path: str | Path,
    *,
    io: tuple[TensorSpec, TensorSpec],
    config: OnnxExportConfig = OnnxExportConfig(),
    weights_sha256: str = "",
    model_card=None,
) -> OnnxExportResult:
    """Export ``network`` (torch, logits) with its probability head to ``out_path``.

    ``io`` are the runner model's tensor specs (:func:`runner_io`); ``model_card`` (a
    :class:`covidct.training.model_card.ModelCard`) is stored as metadata ``model_card`` (JSON). Writes atomically
    (``<out>.tmp`` then rename), then checks the file and its ONNX Runtime parity; on
    any failure nothing is left at ``out_path``. Returns an :class:`OnnxExportResult`.
    """
    import onnx
    import torch

    from covidct.training.heads import probability_model

    out_path = Path(out_path)
    inp, out = exported_specs(io, model_config)
    model = probability_model(network.float().cpu().eval(), model_config)
    chw = tuple(inp.dims[1:])
    sample = torch.from_numpy(np.random.default_rng(config.seed + 1).random((2, *chw), dtype=np.float32))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        _torch_export(model, sample, tmp, inp, out, config)
        proto = onnx.load(str(tmp))
        _check_graph(proto, out_path, inp, out)
        del proto.metadata_props[:]
        for key, value in (
            ("pipeline_config", pipeline_config.to_json()),
            ("model_config", model_config.to_json()),
            ("weights_sha256", weights_sha256),
            ("producer", PRODUCER),
            *((("model_card", model_card.to_json()),) if model_card is not None else ()),
        ):
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"{out_path}: onnx.checker rejects the exported model: {exc}") from exc
        parity = check_parity(
            torch_function(model),
            onnxruntime_function(tmp, inp.name, out.name),
            chw,
            batch_sizes=config.parity_batch_sizes,
            tolerance=config.parity,
            seed=config.seed,
            reference=f"torch {model_config.name}",
            candidate=f"onnxruntime {out_path.name}",
        )
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return OnnxExportResult(
        path=out_path,
        model_name=model_config.name,
        task=model_config.task,
        input=inp,
        output=out,
        opset=config.opset,
        size_bytes=out_path.stat().st_size,
        weights_sha256=weights_sha256,
        parity=parity,
    )


def export_checkpoint(
    checkpoint_dir: str | Path,
    out_path: str | Path,
    *,
    config: OnnxExportConfig = OnnxExportConfig(),
    source: str | Path = DEFAULT_SOURCE_REPOSITORY,
) -> OnnxExportResult:
    """Export a checkpoint folder (``weights.pt``, ``model_config.json``,
    ``pipeline_config.json``, ``model_card.json``) to ``out_path`` and write
    ``pipeline_config.json`` and ``model_card.json`` beside it. Tensor names come from
    ``source``'s runner model config.

    Raises :class:`CheckpointError` for a missing/corrupt/mismatched checkpoint or model
    card, :class:`ExportError` when export or checks fail, :class:`ParityError` beyond
    tolerance.
    """
    from covidct.training.checkpoint import load_checkpoint
    from covidct.training.model_card import FILENAME as CARD_FILENAME

    checkpoint_dir = Path(checkpoint_dir)
    network, model_config, pipeline_config = load_checkpoint(checkpoint_dir)
    sha = file_sha256(checkpoint_dir / WEIGHTS_FILENAME)
    card = checked_model_card(checkpoint_dir, model_config, sha)
    result = export_network(
        network,
        model_config,
        pipeline_config,
        out_path,
        io=runner_io(model_config.task, source),
        config=config,
        weights_sha256=sha,
        model_card=card,
    )
    pipeline_config.save(Path(out_path).parent / PIPELINE_CONFIG_FILENAME)
    card.save(Path(out_path).parent / CARD_FILENAME)
    return result


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (reads the header, not the weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
