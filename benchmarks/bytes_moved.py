"""Bytes moved per request: what crosses each boundary of the ``covid_ct_pipeline`` ensemble.

Every step of the ensemble runs in a Python-backend stub, so each of its inputs and outputs
is copied between Triton's core and the stub (shared memory); the ensemble's inputs and
outputs cross the client boundary (gRPC message, or a system shared-memory region for
``HU_VOLUME`` on the same host). This module counts those bytes for one request from the
ensemble's ``config.pbtxt`` (``ensemble_scheduling``: each step's ``input_map`` and
``output_map``) and the concrete tensors of that request:

* numeric tensors: ``prod(shape) * itemsize`` bytes;
* BYTES tensors (numpy ``object``/``bytes``/``str``): per element its UTF-8 length plus
  Triton's 4-byte length prefix.

:func:`request_tensors` builds the tensors of one series in-process, the way Triton passes
them: :func:`covidct.serving.steps.preprocess_step`, network stand-ins of the served shapes
(``PROBABILITY`` float32 ``[K, 1]``, ``INFECTION_PROBABILITY`` float32 ``[L, 1, S, S]``;
the values do not change a size) and :func:`covidct.serving.steps.vote_step`, keyed by the
ensemble's tensor names (``classifier_input``, ``preprocess_assessment``, ``VERDICT``, ...).
:func:`served_request_tensors` takes the settings, model versions and model cards from a
served model repository, so the sizes equal the served answer's.

A *full-volume crossing* is a step input or output at least as large (bytes) as
``HU_VOLUME`` int16 ``[N, H, W]``; the design has exactly one: ``HU_VOLUME`` into
``preprocess``. Network inputs are float32 resized to ``S x S``, so on slices much smaller
than 512 x 512 they can outgrow the volume; the report lists every crossing by name.

    python -m covidct.benchmarks.bytes_moved --model-repository demo_output/model_repository --slices 35 406 --size 512
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.benchmarks.common import markdown_table, phantom_volume
from covidct.errors import ConfigError
from covidct.serving import tensors as T
from covidct.serving.step_model import parse_model_versions, read_model_cards
from covidct.serving.steps import preprocess_step, vote_step
from covidct.export.pbtxt import get_parameter, latest_version_dir, read_config
from covidct.preprocessing.config import PipelineConfig

CLIENT = "client"
"""The name of the client <-> server boundary in reports (inputs: request, outputs: answer)."""
BYTES_LENGTH_PREFIX = 4
"""Bytes Triton puts before every element of a BYTES tensor (uint32 length)."""
MB = 1e6
"""Bytes per MB in reports."""

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TensorBytes:
    """One tensor at one boundary: ``tensor`` is its ensemble name, ``model_tensor`` its
    name inside the step's model; ``shape`` and numpy ``dtype`` as passed; ``nbytes`` bytes."""

    tensor: str
    model_tensor: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class StepBytes:
    """What one step (or :data:`CLIENT`) receives (``inputs``) and sends (``outputs``)."""

    step: str
    inputs: tuple[TensorBytes, ...]
    outputs: tuple[TensorBytes, ...]

    @property
    def bytes_in(self) -> int:
        return sum(t.nbytes for t in self.inputs)

    @property
    def bytes_out(self) -> int:
        return sum(t.nbytes for t in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        def tensors(items: tuple[TensorBytes, ...]) -> dict[str, Any]:
            return {t.model_tensor: {"tensor": t.tensor, "shape": list(t.shape), "dtype": t.dtype, "bytes": t.nbytes}
                    for t in items}

        return {"step": self.step, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}


@dataclass(frozen=True)
class BytesMoved:
    """One request's bytes: the client boundary, every ensemble step in config order, the
    volume's size and the step boundaries carrying a tensor at least that large
    (``"step in|out TENSOR"``)."""

    client: StepBytes
    steps: tuple[StepBytes, ...]
    volume_tensor: str
    volume_bytes: int
    full_volume_crossings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client.to_dict(), "steps": [s.to_dict() for s in self.steps],
                "volume_tensor": self.volume_tensor, "volume_bytes": self.volume_bytes,
                "full_volume_crossings": list(self.full_volume_crossings)}


def tensor_nbytes(array: np.ndarray) -> int:
    """Bytes of ``array`` on the wire: ``prod(shape) * itemsize``; BYTES tensors (numpy
    object, bytes or str) count each element's UTF-8 length plus the 4-byte length prefix."""
    array = np.asarray(array)
    if array.dtype.kind not in "OSU":
        return int(np.prod(array.shape, dtype=np.int64)) * array.dtype.itemsize
    total = 0
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        total += len(raw) + BYTES_LENGTH_PREFIX
    return total


def _ensemble(config_path: str | Path):
    config = read_config(config_path)
    if config.platform != "ensemble" or not config.ensemble_scheduling.step:
        raise ConfigError(f"{config_path}: model {config.name!r} is not an ensemble with steps "
                          f"(platform {config.platform!r}); expected platform \"ensemble\" and ensemble_scheduling")
    return config


def _tensor(config_path: str | Path, where: str, model_tensor: str, tensor: str, tensors: Arrays) -> TensorBytes:
    if tensor not in tensors:
        raise ConfigError(f"{config_path}: {where} {model_tensor!r} is ensemble tensor {tensor!r}, which the "
                          f"request's tensors do not hold; expected one of {sorted(tensors)}")
    array = np.asarray(tensors[tensor])
    return TensorBytes(tensor, model_tensor, tuple(int(d) for d in array.shape), str(array.dtype),
                       tensor_nbytes(array))


def _step_bytes(config_path: str | Path, config, tensors: Arrays) -> list[StepBytes]:
    steps = []
    for step in config.ensemble_scheduling.step:
        name = step.model_name
        steps.append(StepBytes(
            name,
            tuple(_tensor(config_path, f"step {name!r} input", k, v, tensors)
                  for k, v in sorted(step.input_map.items())),
            tuple(_tensor(config_path, f"step {name!r} output", k, v, tensors)
                  for k, v in sorted(step.output_map.items())),
        ))
    return steps


def step_bytes(ensemble_config_path: str | Path, tensors: Arrays) -> list[StepBytes]:
    """Bytes in and out of every step of the ensemble at ``ensemble_config_path`` (config
    order), for the request whose tensors (by ensemble name) are ``tensors``.
    :class:`ConfigError` when a step names a tensor that ``tensors`` lacks."""
    return _step_bytes(ensemble_config_path, _ensemble(ensemble_config_path), tensors)


def bytes_moved(ensemble_config_path: str | Path, tensors: Arrays, volume_tensor: str = T.HU_VOLUME) -> BytesMoved:
    """:func:`step_bytes` plus the client boundary (ensemble inputs in, outputs out) and
    the full-volume crossings (step inputs/outputs of at least ``volume_tensor``'s bytes)."""
    config = _ensemble(ensemble_config_path)
    where = f"ensemble {config.name!r}"
    client = StepBytes(
        CLIENT,
        tuple(_tensor(ensemble_config_path, f"{where} input", t.name, t.name, tensors) for t in config.input),
        tuple(_tensor(ensemble_config_path, f"{where} output", t.name, t.name, tensors) for t in config.output),
    )
    steps = _step_bytes(ensemble_config_path, config, tensors)
    volume = _tensor(ensemble_config_path, "volume tensor", volume_tensor, volume_tensor, tensors).nbytes
    crossings = tuple(f"{s.step} {direction} {t.tensor}" for s in steps
                      for direction, items in (("in", s.inputs), ("out", s.outputs))
                      for t in items if t.nbytes >= volume)
    return BytesMoved(client, tuple(steps), volume_tensor, volume, crossings)


def _step_functions(config: PipelineConfig, model_versions: Sequence[str], model_card: str
                    ) -> dict[str, Callable[[Arrays], Arrays]]:
    """Model name -> function of the model-side input tensors, returning its outputs."""

    def preprocess(inputs: Arrays) -> Arrays:
        return preprocess_step(**{k.lower(): v for k, v in inputs.items()}, config=config)

    def classifier(inputs: Arrays) -> Arrays:
        return {T.PROBABILITY: np.zeros((inputs[T.CLASSIFIER_INPUT].shape[0], 1), np.float32)}

    def segmenter(inputs: Arrays) -> Arrays:
        k, _, h, w = inputs[T.SEGMENTER_INPUT].shape
        return {T.INFECTION_PROBABILITY: np.zeros((k, 1, h, w), np.float32)}

    def vote(inputs: Arrays) -> Arrays:
        return vote_step(**{k.lower(): v for k, v in inputs.items()}, config=config,
                         model_versions=model_versions, model_card=model_card)

    return {"preprocess": preprocess, "classifier": classifier, "segmenter": segmenter, "vote": vote}


def request_tensors(
    ensemble_config_path: str | Path,
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    config: PipelineConfig,
    *,
    model_versions: Sequence[str] = (),
    model_card: str = "{}",
) -> dict[str, np.ndarray]:
    """Every tensor of one request by ensemble name, computed in-process step by step in
    the ensemble's order (``input_map``/``output_map`` as Triton applies them).

    ``hu``: int16 HU ``[N, H, W]``; ``spacing_mm``: ``(z, y, x)`` in mm; ``config``: the
    served ``pipeline_config.json``; ``model_versions``/``model_card``: what the vote returns.
    """
    path = ensemble_config_path
    ensemble = _ensemble(path)
    functions = _step_functions(config, tuple(model_versions), model_card)
    values: dict[str, np.ndarray] = {
        T.HU_VOLUME: np.ascontiguousarray(hu, dtype=np.int16),
        T.SPACING_MM: np.asarray(spacing_mm, dtype=np.float32),
        T.SLICE_POSITIONS_MM: np.arange(hu.shape[0], dtype=np.float32) * np.float32(spacing_mm[0]),
    }
    for step in ensemble.ensemble_scheduling.step:
        name = step.model_name
        if name not in functions:
            raise ConfigError(f"{path}: step model {name!r} has no in-process stand-in; expected one of "
                              f"{sorted(functions)}")
        for key, tensor in step.input_map.items():
            _tensor(path, f"step {name!r} input", key, tensor, values)
        outputs = functions[name]({key: values[tensor] for key, tensor in step.input_map.items()})
        for key, tensor in step.output_map.items():
            if key not in outputs:
                raise ConfigError(f"{path}: step {name!r} output {key!r} is not returned by the step function; "
                                  f"it returns {sorted(outputs)}")
            values[tensor] = np.asarray(outputs[key])
    return values


def served_request_tensors(model_repository: str | Path, hu: np.ndarray, spacing_mm: Sequence[float]
                           ) -> dict[str, np.ndarray]:
    """:func:`request_tensors` with the served repository's ensemble config, the
    ``pipeline_config.json`` of ``preprocess``'s latest version, and the vote's
    ``model_versions`` parameter and ``model_cards.json``."""
    repo = Path(model_repository)
    vote_dir = repo / "vote"
    return request_tensors(
        repo / T.ENSEMBLE, hu, spacing_mm, PipelineConfig.load(latest_version_dir(repo / "preprocess")),
        model_versions=parse_model_versions(get_parameter(read_config(vote_dir), "model_versions", "") or ""),
        model_card=read_model_cards(latest_version_dir(vote_dir)),
    )


def _mb(nbytes: int) -> str:
    """``nbytes`` in MB, four significant digits (``2e-05`` for 20 bytes)."""
    return f"{nbytes / MB:.4g}"


def bytes_table(rows: Sequence[tuple[Any, Mapping[str, Any]]]) -> str:
    """Markdown table, one line per ``(label, BytesMoved.to_dict())``: MB into and out of
    the client boundary and every step, and the full-volume crossings."""
    if not rows:
        return ""
    steps = [s["step"] for s in rows[0][1]["steps"]]
    header = ["slices", "client in (MB)", *[f"{s} {d} (MB)" for s in steps for d in ("in", "out")],
              "client out (MB)", "full-volume crossings"]
    lines = []
    for label, moved in rows:
        by_step = {s["step"]: s for s in moved["steps"]}
        cells = [_mb(by_step[s][f"bytes_{d}"]) if s in by_step else "-" for s in steps for d in ("in", "out")]
        crossings = moved["full_volume_crossings"]
        lines.append([label, _mb(moved["client"]["bytes_in"]), *cells, _mb(moved["client"]["bytes_out"]),
                      f"{len(crossings)} ({', '.join(crossings)})" if crossings else "0"])
    return markdown_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    """Print the bytes table of phantom series against a served repository's settings (no server)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", required=True, help="served repository (its settings and ensemble)")
    p.add_argument("--slices", type=int, nargs="+", default=[35, 406], help="phantom slice counts N")
    p.add_argument("--size", type=int, default=512, help="phantom slice side in pixels")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    config_path = Path(a.model_repository) / T.ENSEMBLE
    rows = []
    for n in a.slices:
        volume = phantom_volume(n, a.size, a.seed + n)
        tensors = served_request_tensors(a.model_repository, volume.hu, volume.spacing_mm)
        rows.append((n, bytes_moved(config_path, tensors).to_dict()))
    print(bytes_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
