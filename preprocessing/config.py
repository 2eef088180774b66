"""Frozen, versioned configuration of every preprocessing stage.

One frozen dataclass per stage. :class:`PipelineConfig` bundles the settings that must
travel with a trained model (HU window, input sizes, masks, selection region, vote
threshold); it is saved as JSON beside the weights (``pipeline_config.json``) and read
back by the exporter, the Triton models and the client, so none of them hard-codes a
setting.

Units: HU for intensities, pixels for image regions, mm for distances.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from covidct.errors import ConfigError

PIPELINE_CONFIG_VERSION = 1
PIPELINE_CONFIG_FILENAME = "pipeline_config.json"

T = TypeVar("T")


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


@dataclass(frozen=True)
class ReaderConfig:
    """Series reading and validation.

    series_rule: how to pick one series from a folder that holds several:
        ``"most_slices"`` (axial CT series with the most slices; ties broken by the
        smallest slice thickness) or ``"thinnest"`` (smallest slice spacing first).
    gap_tolerance: a slice distance above ``(1 + gap_tolerance) * median`` is a gap.
    decode_workers: processes for pixel decoding; 0 means ``os.cpu_count()``.
    """

    min_slices: int = 2
    max_slices: int = 2000
    series_rule: str = "most_slices"
    gap_tolerance: float = 0.5
    decode_workers: int = 0


@dataclass(frozen=True)
class WindowConfig:
    """HU window mapped linearly to [0, 1] (values outside are clipped)."""

    min_hu: float = -1000.0
    max_hu: float = 400.0


@dataclass(frozen=True)
class MaskConfig:
    """Paper 000's classical masks.

    tissue_threshold_hu: at or above it is soft tissue/bone (lung is below, inside body).
    infection_threshold_hu: lung pixels at or above it are infection candidates.
    erosion_iterations / dilation_iterations: clean-up of the infection mask (pixels).
    """

    tissue_threshold_hu: float = -300.0
    infection_threshold_hu: float = -700.0
    erosion_iterations: int = 1
    dilation_iterations: int = 1


@dataclass(frozen=True)
class CropConfig:
    """Paper 003's lung bounding-box crop: box shrunk by ``margin_px``, resized back."""

    margin_px: int = 5


@dataclass(frozen=True)
class SelectionConfig:
    """Paper 002's open-lung slice selection.

    The region is given in pixels of a ``reference_size`` x ``reference_size`` slice and
    scaled to the actual size. A pixel is dark below ``dark_threshold_hu``; per series,
    a slice is kept when its dark count exceeds ``(max - min) / divisor``.
    """

    region_x: tuple[int, int] = (120, 370)
    region_y: tuple[int, int] = (240, 340)
    reference_size: int = 512
    dark_threshold_hu: float = -724.0
    divisor: float = 1.5


@dataclass(frozen=True)
class VoteConfig:
    """Patient vote: positive when the fraction of selected slices with probability
    >= ``slice_threshold`` is at least ``positive_fraction``. The paper's text uses 0.30;
    the authors' released code 0.10."""

    positive_fraction: float = 0.30
    slice_threshold: float = 0.5


@dataclass(frozen=True)
class ModelInputConfig:
    """What a network expects: square input ``size`` in pixels, whether the lung crop
    is applied, and whether lung/infection masks are stacked as extra channels."""

    size: int = 224
    lung_crop: bool = False
    mask_channels: bool = False

    @property
    def channels(self) -> int:
        return 3 if self.mask_channels else 1


@dataclass(frozen=True)
class PipelineConfig(JsonConfig):
    """All preprocessing settings that travel with a model (versioned)."""

    FILENAME: ClassVar[str] = PIPELINE_CONFIG_FILENAME
    LABEL: ClassVar[str] = "pipeline config"

    version: int = PIPELINE_CONFIG_VERSION
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    vote: VoteConfig = field(default_factory=VoteConfig)
    classifier_input: ModelInputConfig = field(default_factory=ModelInputConfig)
    segmenter_input: ModelInputConfig = field(
        default_factory=lambda: ModelInputConfig(size=256)
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "PipelineConfig":
        version = data.get("version", PIPELINE_CONFIG_VERSION) if isinstance(data, dict) else None
        if version != PIPELINE_CONFIG_VERSION:
            raise ConfigError(
                f"{source}: pipeline config version {version!r} is not supported; "
                f"expected {PIPELINE_CONFIG_VERSION}"
            )
        return config_from_dict(cls, data, source)


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
