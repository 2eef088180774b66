"""The stage configs and ``pipeline_config.json`` (any supported version) -> one :class:`PipelineConfig`.

One frozen dataclass per preprocessing stage (HU window, masks, crop, slice selection,
vote, lung segmentation, assessment, model inputs). :class:`PipelineConfig` bundles them
with the reader's settings (:class:`~covidct.preprocessing.reader_config.ReaderConfig`):
the settings that must travel with a trained model. It is saved as JSON beside the
weights (``pipeline_config.json``) and read back by the exporter, the Triton models and
the client, so none of them hard-codes a setting; :meth:`PipelineConfig.from_dict`
migrates older versions. The JSON machinery and range checks are in
:mod:`covidct.preprocessing.config_json`.

Units: HU for intensities, pixels for image regions, mm for distances, ml for volumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from covidct.errors import ConfigError
from covidct.preprocessing.config_json import JsonConfig, check_interval, check_range, config_from_dict
from covidct.preprocessing.reader_config import ReaderConfig

PIPELINE_CONFIG_VERSION = 3
#: Older pipeline config versions that still load (missing sections take their defaults).
SUPPORTED_PIPELINE_CONFIG_VERSIONS = (1, 2, 3)
PIPELINE_CONFIG_FILENAME = "pipeline_config.json"

#: Slice selection rules of :class:`SelectionConfig`.
SELECTION_RULES = ("lung_area", "paper002")


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

    rule: ``"lung_area"`` (default: keep slices whose 3-D lung mask area is at least
        ``min_lung_area_fraction`` of the series maximum, see
        :func:`covidct.preprocessing.slice_selection.select_by_lung_area`) or ``"paper002"`` (the
        open-lung dark-pixel rule above, kept for the paper comparison).
    min_lung_area_fraction: in [0, 1]; fraction of the largest per-slice lung area (mm^2).
    """

    region_x: tuple[int, int] = (120, 370)
    region_y: tuple[int, int] = (240, 340)
    reference_size: int = 512
    dark_threshold_hu: float = -724.0
    divisor: float = 1.5
    rule: str = "lung_area"
    min_lung_area_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.rule not in SELECTION_RULES:
            raise ConfigError(f"SelectionConfig.rule={self.rule!r}; expected one of {list(SELECTION_RULES)}")
        check_range("SelectionConfig", "min_lung_area_fraction", self.min_lung_area_fraction, 0.0, 1.0)


@dataclass(frozen=True)
class VoteConfig:
    """Patient vote: positive when the fraction of selected slices with probability
    >= ``slice_threshold`` is at least ``positive_fraction``. The paper's text uses 0.30;
    the authors' released code 0.10. ``infection_threshold``: a pixel counts as infected
    for the lesion burden when its infection probability is at least this (0..1)."""

    positive_fraction: float = 0.30
    slice_threshold: float = 0.5
    infection_threshold: float = 0.5

    def __post_init__(self) -> None:
        check_range("VoteConfig", "infection_threshold", self.infection_threshold, 0.0, 1.0)


@dataclass(frozen=True)
class LungSegmentationConfig:
    """3-D lung mask of the whole series (:mod:`covidct.preprocessing.lung_segmentation`).

    mask_size: the in-plane size (pixels) the slices are block-averaged to (integer
        factor ``max(1, round(min(H, W) / mask_size))``).
    body_threshold_hu: body tissue (fat, muscle, bone) is at or above it (HU).
    lung_threshold_range_hu: the iterative (optimal) lung threshold is clamped to it (HU).
    airway_threshold_hu: the most lenient airway threshold (HU, block means): the trachea
        and main bronchi are grown from -1000 HU up to it in 25 HU steps while they do not leak.
    trachea_area_mm2: cross-section range of the trachea seed (mm^2).
    trachea_max_offset_mm: the seed's distance from the body's centre column (mm).
    trachea_search_mm: the seed is searched in this many mm below the top body slice.
    max_airway_ml: a grown airway tree above it has leaked into the lungs (ml).
    min_component_ml: a lung component holds at least this volume (ml).
    min_component_extent_mm: ... and spans at least this craniocaudal extent (mm).
    max_component_air_fraction: ... and at most this fraction of its voxels is below
        ``gas_threshold_hu`` (pure air: bowel gas, air pockets; lung parenchyma is denser).
    gas_threshold_hu: pure air (gas) is below it (HU, block means).
    bone_threshold_hu: bone is at or above it (HU, block means).
    """

    mask_size: int = 128
    body_threshold_hu: float = -500.0
    lung_threshold_range_hu: tuple[float, float] = (-600.0, -350.0)
    airway_threshold_hu: float = -900.0
    trachea_area_mm2: tuple[float, float] = (40.0, 900.0)
    trachea_max_offset_mm: float = 40.0
    trachea_search_mm: float = 60.0
    max_airway_ml: float = 200.0
    min_component_ml: float = 10.0
    min_component_extent_mm: float = 10.0
    max_component_air_fraction: float = 0.25
    gas_threshold_hu: float = -950.0
    bone_threshold_hu: float = 250.0

    def __post_init__(self) -> None:
        owner = "LungSegmentationConfig"
        if isinstance(self.mask_size, bool) or not isinstance(self.mask_size, int) or not 8 <= self.mask_size <= 1024:
            raise ConfigError(f"{owner}.mask_size={self.mask_size!r}; expected an integer in [8, 1024] (pixels)")
        check_range(owner, "body_threshold_hu", self.body_threshold_hu, -900.0, 0.0)
        check_interval(owner, "lung_threshold_range_hu", self.lung_threshold_range_hu, -900.0, 0.0)
        check_range(owner, "airway_threshold_hu", self.airway_threshold_hu, -1024.0, -800.0)
        check_interval(owner, "trachea_area_mm2", self.trachea_area_mm2, 0.0, 1e4)
        check_range(owner, "trachea_max_offset_mm", self.trachea_max_offset_mm, 0.0, 500.0)
        check_range(owner, "trachea_search_mm", self.trachea_search_mm, 0.0, 500.0)
        check_range(owner, "max_airway_ml", self.max_airway_ml, 0.0, 2000.0)
        check_range(owner, "min_component_ml", self.min_component_ml, 0.0, 5000.0)
        check_range(owner, "min_component_extent_mm", self.min_component_extent_mm, 0.0, 500.0)
        check_range(owner, "max_component_air_fraction", self.max_component_air_fraction, 0.0, 1.0)
        check_range(owner, "bone_threshold_hu", self.bone_threshold_hu, 0.0, 2000.0)
        check_range(owner, "gas_threshold_hu", self.gas_threshold_hu, -1024.0, -800.0)


@dataclass(frozen=True)
class AssessmentConfig:
    """Plausibility checks of a series before any verdict (:mod:`covidct.preprocessing.assessment`).

    Ranges are ``(low, high)`` inclusive. Units: mm, ml, HU, fractions.
    pixel_spacing_mm / slice_spacing_mm: plausible in-plane and slice spacing (mm); the
        in-plane range reaches 6 mm so that a 360 mm field of view stored at 64 x 64 pixels
        (reduced test volumes) stays assessable, and still refuses 100 mm pixels.
    min_body_ml: less body tissue than this is ``no_body`` (ml).
    min_lung_ml: less lung than this is ``no_lungs`` (ml).
    lung_volume_ml: plausible adult whole-lung volume at CT (ml).
    min_lung_slices / min_lung_extent_mm: fewer lung-bearing slices or a shorter
        craniocaudal lung extent is ``too_few_lung_slices``.
    coverage_fit_mm / max_taper_mm / max_missing_lung_fraction: whether the scan holds
        the whole lungs (:mod:`covidct.preprocessing.lung_coverage`). Where the first or last
        slice holds lung, the lung beyond that edge is estimated: its area tapers to zero
        over ``A_end / slope`` mm, the slope fitted to the lung area of the outermost
        ``coverage_fit_mm`` (20 mm: 11 slices at 2 mm spacing), at most the flattest
        plausible taper (the area falling from the largest slice's to zero over
        ``max_taper_mm``, 120 mm; whole sample series and phantoms rise from their last
        lung slice to 90 % of the largest area within 60-124 mm). More than
        ``max_missing_lung_fraction`` (0.05: 5 % of the estimated whole-lung volume) outside
        the scan, both ends together, is ``lungs_incomplete``; less, but more than none,
        is the ``partial_coverage`` warning (a clipped margin: the answer stands).
        Chosen on the sample series and phantoms (``benchmarks/results/cpu-2core/coverage.md``):
        removing the last one or two lung slices at an end is estimated at most 2.4 %
        missing (8.9 mm slices; at most 0.22 % at 2 mm), removing 20 % of the lungs at
        least 20 %.
    air_hu: outside air is expected here (HU).
    tissue_hu: median of body tissue between ``body_threshold_hu`` and bone (HU).
    min_soft_tissue_fraction: fraction of body tissue voxels within ``soft_tissue_hu``.
    soft_tissue_hu: the fat and soft-tissue band (HU).
    min_spine_posterior_mm: the spine lies at least this far posterior of the body centre (mm).
    max_spine_lateral_ratio: |lateral offset| / posterior offset of the spine at most this.
    gap_tolerance: two neighbouring slice positions more than ``(1 + gap_tolerance)`` x
        the median slice spacing apart are a gap (slices missing); a gap with lung on
        either side is ``slice_gap`` (0.5: 3 mm between 2 mm slices is a gap, 2.9 mm not).
    """

    pixel_spacing_mm: tuple[float, float] = (0.2, 6.0)
    slice_spacing_mm: tuple[float, float] = (0.1, 15.0)
    min_body_ml: float = 500.0
    min_lung_ml: float = 100.0
    lung_volume_ml: tuple[float, float] = (1500.0, 9000.0)
    min_lung_slices: int = 10
    min_lung_extent_mm: float = 120.0
    coverage_fit_mm: float = 20.0  # the end profile fitted: outermost 20 mm of lung area (>= 2 slices)
    max_taper_mm: float = 120.0  # flattest lung end: largest slice area to zero over 120 mm
    max_missing_lung_fraction: float = 0.05  # above 5 % of the lung outside the scan: lungs_incomplete
    air_hu: tuple[float, float] = (-1100.0, -900.0)
    tissue_hu: tuple[float, float] = (-150.0, 150.0)
    soft_tissue_hu: tuple[float, float] = (-200.0, 200.0)
    min_soft_tissue_fraction: float = 0.5
    min_spine_posterior_mm: float = 20.0
    max_spine_lateral_ratio: float = 0.7
    gap_tolerance: float = 0.5

    def __post_init__(self) -> None:
        owner = "AssessmentConfig"
        check_interval(owner, "pixel_spacing_mm", self.pixel_spacing_mm, 0.0, 100.0)
        check_interval(owner, "slice_spacing_mm", self.slice_spacing_mm, 0.0, 100.0)
        check_range(owner, "min_body_ml", self.min_body_ml, 0.0, 1e6)
        check_range(owner, "min_lung_ml", self.min_lung_ml, 0.0, 1e5)
        check_interval(owner, "lung_volume_ml", self.lung_volume_ml, 0.0, 1e5)
        if isinstance(self.min_lung_slices, bool) or not isinstance(self.min_lung_slices, int) \
                or not 1 <= self.min_lung_slices <= 10000:
            raise ConfigError(f"{owner}.min_lung_slices={self.min_lung_slices!r}; expected an integer in [1, 10000]")
        check_range(owner, "min_lung_extent_mm", self.min_lung_extent_mm, 0.0, 1000.0)
        check_range(owner, "coverage_fit_mm", self.coverage_fit_mm, 1.0, 200.0)
        check_range(owner, "max_taper_mm", self.max_taper_mm, 1.0, 1000.0)
        check_range(owner, "max_missing_lung_fraction", self.max_missing_lung_fraction, 0.0, 1.0)
        check_range(owner, "gap_tolerance", self.gap_tolerance, 0.01, 100.0)
        check_interval(owner, "air_hu", self.air_hu, -4000.0, 4000.0)
        check_interval(owner, "tissue_hu", self.tissue_hu, -4000.0, 4000.0)
        check_interval(owner, "soft_tissue_hu", self.soft_tissue_hu, -4000.0, 4000.0)
        check_range(owner, "min_soft_tissue_fraction", self.min_soft_tissue_fraction, 0.0, 1.0)
        check_range(owner, "min_spine_posterior_mm", self.min_spine_posterior_mm, 0.0, 500.0)
        check_range(owner, "max_spine_lateral_ratio", self.max_spine_lateral_ratio, 0.0, 100.0)


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
    lung_segmentation: LungSegmentationConfig = field(default_factory=LungSegmentationConfig)
    assessment: AssessmentConfig = field(default_factory=AssessmentConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "PipelineConfig":
        version = data.get("version", PIPELINE_CONFIG_VERSION) if isinstance(data, dict) else None
        if version not in SUPPORTED_PIPELINE_CONFIG_VERSIONS:
            raise ConfigError(
                f"{source}: pipeline config version {version!r} is not supported; "
                f"expected {' or '.join(str(v) for v in SUPPORTED_PIPELINE_CONFIG_VERSIONS)}"
            )
        data = dict(data)
        if version == 1:
            # Version 1 had no lung_segmentation/assessment sections (they take their
            # defaults) and selected slices by paper 002's rule only: keep that rule.
            selection = data.get("selection", {})
            if isinstance(selection, dict) and "rule" not in selection:
                data["selection"] = {**selection, "rule": "paper002"}
        if version < 3:
            # Version 3 replaced the end-slice area rule (assessment.max_end_area_fraction)
            # by the estimated lung fraction outside the scan (max_missing_lung_fraction and
            # its taper settings, at their defaults), and moved gap detection from the
            # reader (reader.gap_tolerance) to the assessment (assessment.gap_tolerance).
            _moved(data, "assessment", "max_end_area_fraction")
            tolerance = _moved(data, "reader", "gap_tolerance")
            if tolerance is not None:
                data["assessment"] = {**data.get("assessment", {}), "gap_tolerance": tolerance}
        data["version"] = PIPELINE_CONFIG_VERSION
        return config_from_dict(cls, data, source)


def _moved(data: dict[str, Any], section: str, key: str) -> Any:
    """Remove ``data[section][key]`` of an older config version; its value, or ``None``."""
    part = data.get(section)
    if not isinstance(part, dict) or key not in part:
        return None
    data[section] = {k: v for k, v in part.items() if k != key}
    return part[key]

