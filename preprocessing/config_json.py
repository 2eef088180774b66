"""Plain JSON data <-> frozen config dataclasses, and the range checks their ``__post_init__`` run.

:class:`JsonConfig` gives a frozen dataclass ``to_dict``/``to_json``/``save``/``load``;
:func:`config_from_dict` turns a (nested) JSON object into such a dataclass, rejecting
unknown keys and turning lists back into tuples. :func:`check_range` and
:func:`check_interval` raise :class:`~covidct.errors.ConfigError` naming the field of a
value outside its bounds (the bounds are in the field's own unit: HU, mm, ml, pixels, ...).

Used by the pipeline config (:mod:`covidct.preprocessing.config`), the reader's config
(:mod:`covidct.preprocessing.reader_config`) and the model and training configs
(:mod:`covidct.training.registry`, :mod:`covidct.training.config`). Version migration of
``pipeline_config.json`` lives with :class:`~covidct.preprocessing.config.PipelineConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from covidct.errors import ConfigError

T = TypeVar("T")


def check_range(owner: str, name: str, value: Any, low: float, high: float) -> None:
    """ConfigError naming ``owner.name`` unless ``low <= value <= high`` (finite number, the field's unit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        raise ConfigError(f"{owner}.{name}={value!r}; expected a number in [{low}, {high}]")


def check_interval(owner: str, name: str, value: Any, low: float, high: float) -> None:
    """ConfigError unless ``value`` is a pair ``(a, b)`` with ``low <= a < b <= high`` (the field's unit)."""
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
          and low <= value[0] < value[1] <= high)
    if not ok:
        raise ConfigError(f"{owner}.{name}={value!r}; expected (low, high) with {low} <= low < high <= {high}")


class JsonConfig:
    """JSON save/load for frozen config dataclasses (pipeline, model, training configs).

    Subclasses set ``FILENAME`` (used when a directory is given) and ``LABEL`` (used in
    error messages). Unknown keys and malformed files raise :class:`ConfigError`.
    """

    FILENAME: ClassVar[str] = "config.json"
    LABEL: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, directory_or_file: str | Path) -> Path:
        """Write the config as JSON; a directory gets ``FILENAME``."""
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / self.FILENAME
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Any:
        return config_from_dict(cls, data, source)

    @classmethod
    def load(cls, directory_or_file: str | Path) -> Any:
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / cls.FILENAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: {cls.LABEL} not found") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
    """Build a (nested) frozen config dataclass from plain data, rejecting unknown keys.

    Lists become tuples where the field default is a tuple, so JSON round trips are exact.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {cls.__name__} expects an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown {cls.__name__} keys {unknown}; expected some of {sorted(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        default = (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        )
        if dataclasses.is_dataclass(default):
            kwargs[name] = config_from_dict(type(default), value, f"{source}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: cannot build {cls.__name__}: {exc}") from exc
