"""Model registry (timm-like): names -> builder functions, plus the frozen ModelConfig.

A builder is registered with its defaults::

    @register_model("cnn6", task="classification", input_size=224, num_outputs=1,
                    hidden_units=128)
    def cnn6(cfg: ModelConfig) -> nn.Module: ...

``create_model("cnn6", input_size=64)`` resolves a :class:`ModelConfig` from the
registered defaults and the overrides, builds the network and attaches the config as
``model.model_config``. ``model_config.json`` in a checkpoint is ``ModelConfig.to_json``.

Registered networks take float32 input ``[B, in_channels, input_size, input_size]``
(NCHW) and return logits: ``[B, num_outputs]`` for classifiers, ``[B, 1, S, S]`` for
segmenters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from torch import nn

from covidct.errors import ConfigError
from covidct.preprocessing.config_json import JsonConfig

MODEL_CONFIG_FILENAME = "model_config.json"
TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """What a registered network is and expects.

    name: registry name. task: ``"classification"`` or ``"segmentation"``.
    input_size: square input side S in pixels. in_channels: C of the ``[B, C, S, S]``
    input (1 = windowed HU; 3 = windowed HU + lung mask + infection mask).
    num_outputs: 1 = one logit (sigmoid / BCE), 2 = two logits (softmax / CCE);
    segmenters have 1 output channel. extra: architecture keyword arguments
    (e.g. ``base_channels``), JSON-serialisable.
    """

    FILENAME: ClassVar[str] = MODEL_CONFIG_FILENAME
    LABEL: ClassVar[str] = "model config"

    name: str
    task: str
    input_size: int
    in_channels: int = 1
    num_outputs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"ModelConfig.task must be one of {TASKS}; got {self.task!r}")
        for key in ("input_size", "in_channels", "num_outputs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ModelConfig.{key} must be a positive int; got {value!r}")
        if self.task == "segmentation" and self.num_outputs != 1:
            raise ConfigError(
                f"ModelConfig.num_outputs of a segmenter must be 1; got {self.num_outputs}"
            )
        if self.task == "classification" and self.num_outputs not in (1, 2):
            raise ConfigError(
                f"ModelConfig.num_outputs of a classifier must be 1 (sigmoid) or 2 (softmax); "
                f"got {self.num_outputs}"
            )


@dataclass(frozen=True)
class _Entry:
    builder: Callable[[ModelConfig], nn.Module]
    defaults: ModelConfig


_REGISTRY: dict[str, _Entry] = {}  # filled by @register_model at import time only


def register_model(
    name: str,
    *,
    task: str,
    input_size: int,
    in_channels: int = 1,
    num_outputs: int = 1,
    **extra: Any,
) -> Callable[[Callable[[ModelConfig], nn.Module]], Callable[[ModelConfig], nn.Module]]:
    """Decorator registering ``builder(cfg: ModelConfig) -> nn.Module`` under ``name``.

    The keyword arguments are the defaults; ``extra`` lists every architecture keyword
    the builder accepts (``create_model`` rejects unknown ones).
    """
    defaults = ModelConfig(name, task, input_size, in_channels, num_outputs, dict(extra))

    def decorator(builder: Callable[[ModelConfig], nn.Module]) -> Callable[[ModelConfig], nn.Module]:
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} is registered twice")
        _REGISTRY[name] = _Entry(builder, defaults)
        return builder

    return decorator


def _ensure_loaded() -> None:
    # The model families register themselves when imported.
    import covidct.training.models  # noqa: F401


def list_models(task: str | None = None) -> list[str]:
    """Registered model names (sorted), optionally only those of one task."""
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.defaults.task == task)


def default_config(name: str) -> ModelConfig:
    """The registered default :class:`ModelConfig` of ``name``."""
    _ensure_loaded()
    try:
        return _REGISTRY[name].defaults
    except KeyError as exc:
        raise ConfigError(f"unknown model {name!r}; registered: {list_models()}") from exc


def resolve_config(name: str, **overrides: Any) -> ModelConfig:
    """Registered defaults of ``name`` with ``overrides`` applied (fields or extras)."""
    base = default_config(name)
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", "extra"}
    extra = dict(base.extra)
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in fields:
            top[key] = value
        elif key == "extra":
            extra.update(value)
        elif key in extra:
            extra[key] = value
        else:
            raise ConfigError(
                f"model {name!r} has no option {key!r}; options: {sorted(fields | set(extra))}"
            )
    unknown = sorted(set(extra) - set(base.extra))
    if unknown:
        raise ConfigError(f"model {name!r} has no options {unknown}; extras: {sorted(base.extra)}")
    if top.get("task", base.task) != base.task:
        raise ConfigError(f"model {name!r} is a {base.task} network; cannot set task={top['task']!r}")
    return dataclasses.replace(base, extra=extra, **top)


def create_model_from_config(cfg: ModelConfig) -> nn.Module:
    """Build the network described by ``cfg`` (validated against the registry)."""
    resolved = resolve_config(
        cfg.name,
        input_size=cfg.input_size,
        in_channels=cfg.in_channels,
        num_outputs=cfg.num_outputs,
        extra=cfg.extra,
    )
    model = _REGISTRY[cfg.name].builder(resolved)
    model.model_config = resolved
    return model


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build registered network ``name``; ``overrides`` replace config fields or extras.

    The returned module carries its resolved config as ``model.model_config``.
    """
    return create_model_from_config(resolve_config(name, **overrides))
