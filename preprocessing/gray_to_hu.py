"""Estimate, per 8-bit windowed CT image, the linear map gray level -> Hounsfield units (HU).

Public 8-bit chest CT sets (JPEG/PNG screenshots) were windowed with a window nobody
recorded, and it differs between images. ``hu = slope_hu * gray + intercept_hu`` is
estimated from the image's own content: landmarks of known HU found as peaks of its gray
histogram. Images are ``[H, W]`` (rows, columns) uint8; gray levels 0..255; HU as in DICOM.
No library does this (window estimation of CT screenshots), hence this module.

Method:

1. Histogram of the unsaturated gray levels (black_gray+1)..254 (0 and 255 are clipped, their HU
   unknowable), Gaussian-smoothed; peaks by :func:`scipy.signal.find_peaks` with a
   prominence threshold. The largest gap between consecutive peaks splits them into a
   dark (air/lung) and a bright (soft tissue) group.
2. Dark landmark, decided spatially rather than from the histogram alone, because
   lung-cropped screenshots hold little or no outside air and their darkest peak is
   aerated lung (about -880 HU), not air (-1000 HU): the dark pixels are split into
   components touching the image border and enclosed ones. Two classes with distinct modes:
   the darker is air (outside air, or trachea when the lungs touch the crop border), the
   other lung. One class: lung if enclosed or vessel-textured (many small holes), else air.
   Air is preferred as landmark (its HU does not vary); lung is the fallback.
3. Soft tissue: the most prominent bright peak; when a second bright peak sits at the
   fat (-100 HU) vs muscle (+40 HU) separation expected at the preliminary slope, both
   are used (least squares over three landmarks); otherwise the peak is merged soft tissue.
4. Air saturated at 0 (enclosed pixels at gray 0: mediastinal windows): the two most
   prominent peaks are fat and muscle.
5. Soft tissue saturated at 255 without a tissue peak: refused (air and lung alone are too
   close and lung HU too variable for a defensible slope).
6. The result must give a window width W and level L within the configured ranges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from covidct.errors import GrayMapError

HU_MIN, HU_MAX = -1024, 3071


@dataclass(frozen=True)
class GrayMapConfig:
    """Settings of :func:`estimate_gray_to_hu`; gray values in gray levels (0..255), HU in HU.

    Attributes:
        air_hu, lung_hu, fat_hu, muscle_hu, soft_tissue_hu: HU of the landmarks (outside
            air/trachea, mode of aerated lung, fat, muscle/blood, fat and muscle merged).
        black_gray: gray levels 0..black_gray count as saturated black (JPEG ringing around the
            black outside the reconstruction circle).
        smoothing_gray: Gaussian sigma of the histogram smoothing (gray levels).
        min_peak_prominence: peak prominence, fraction of the tallest smoothed bin.
        min_peak_fraction: peak prominence, fraction of the unsaturated pixels per gray level.
        min_unsaturated_fraction: fewest pixels in gray (black_gray+1)..254 (fraction of the image).
        min_class_fraction: fewest pixels of a dark class (air or lung), fraction of the image.
        min_air_lung_separation: air-to-lung mode gap, fraction of the dark-to-tissue gap.
        lung_hole_density: small holes per 10,000 px above which a border-touching dark
            class is lung (vessels), not air.
        saturated_air_fraction: enclosed black pixels (fraction of the image) meaning air
            and lung are saturated (mediastinal window); they must also outnumber the pixels from
            black to half again past the darkest peak (else the darkest peak is lung with a black tail).
        fat_muscle_ratio: accepted range of the observed fat-muscle peak gap over the gap
            expected at the preliminary slope.
        companion_prominence: prominence of the second (fat or muscle) peak, fraction of the main threshold.
        width_hu, level_hu: accepted window width W and level L (HU); L reaches 1100 because some
            sets were min-max scaled from -1024..3071 HU (L about 1020).
        max_residual_hu: largest landmark residual of a three-landmark fit (HU).
        max_white_fraction, max_white_top_hu: at least this fraction at gray 255 with gray 255 above this HU
            means soft tissue is saturated and the "tissue" peak is lung: refused (case c).
    """

    air_hu: float = -1000.0
    lung_hu: float = -880.0
    fat_hu: float = -100.0
    muscle_hu: float = 40.0
    soft_tissue_hu: float = 0.0
    black_gray: int = 5
    smoothing_gray: float = 1.5
    min_peak_prominence: float = 0.03
    min_peak_fraction: float = 0.001
    min_unsaturated_fraction: float = 0.2
    min_class_fraction: float = 0.002
    min_air_lung_separation: float = 0.04
    lung_hole_density: float = 2.0
    saturated_air_fraction: float = 0.01
    fat_muscle_ratio: tuple[float, float] = (0.5, 1.6)
    companion_prominence: float = 0.25
    width_hu: tuple[float, float] = (250.0, 5000.0)
    level_hu: tuple[float, float] = (-1100.0, 1100.0)
    max_residual_hu: float = 60.0
    max_white_fraction: float = 0.1
    max_white_top_hu: float = 150.0


@dataclass(frozen=True)
class GrayToHU:
    """Linear map ``hu = slope_hu * gray + intercept_hu`` of one image.

    Attributes:
        slope_hu: HU per gray level.
        intercept_hu: HU of gray 0.
        method: landmarks used, e.g. ``"air+soft_tissue"``, ``"air+fat+muscle"``, ``"fat+muscle"``.
        landmarks: ``(name, gray, HU)`` of every landmark of the fit.
    """

    slope_hu: float
    intercept_hu: float
    method: str
    landmarks: tuple[tuple[str, float, float], ...]

    @property
    def window_hu(self) -> tuple[float, float]:
        """HU of gray 0 and of gray 255 (saturated pixels lie at or beyond them)."""
        return self.intercept_hu, self.intercept_hu + 255.0 * self.slope_hu

    def apply(self, gray: np.ndarray) -> np.ndarray:
        """Integer gray ``[..., H, W]`` -> int16 HU, rounded, clipped to [-1024, 3071]."""
        hu = np.rint(np.asarray(gray, dtype=np.float64) * self.slope_hu + self.intercept_hu)
        return np.clip(hu, HU_MIN, HU_MAX).astype(np.int16)

    def to_dict(self) -> dict:
        """JSON-ready dict, with window width/level (HU) added."""
        lo, hi = self.window_hu
        return {**asdict(self), "landmarks": [list(x) for x in self.landmarks], "width_hu": hi - lo,
                "level_hu": (lo + hi) / 2}


def _mode(values: np.ndarray, sigma: float) -> float:
    hist = gaussian_filter1d(np.bincount(values, minlength=256).astype(float), sigma)
    return float(np.argmax(hist))


def _dark_landmark(gray: np.ndarray, threshold: float, cfg: GrayMapConfig, span: float) -> tuple[str, float, float]:
    """Air (-1000 HU) or lung landmark from the pixels at or below ``threshold`` (gray)."""
    dark = gray <= threshold
    labels, _ = ndi.label(dark)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = np.isin(labels, edge[edge > 0])
    floor = cfg.min_class_fraction * gray.size
    classes = {}
    for name, mask in (("border", border), ("enclosed", dark & ~border)):
        values = gray[mask & (gray > cfg.black_gray)]
        if values.size >= floor:
            classes[name] = (_mode(values, cfg.smoothing_gray), mask)
    if len(classes) == 2:
        (m_b, _), (m_i, _) = classes["border"], classes["enclosed"]
        if abs(m_b - m_i) >= cfg.min_air_lung_separation * span:
            return ("air", min(m_b, m_i), cfg.air_hu)
        return ("lung", _mode(gray[dark & (gray > cfg.black_gray)], cfg.smoothing_gray), cfg.lung_hu)
    if "enclosed" in classes:
        return ("lung", classes["enclosed"][0], cfg.lung_hu)
    mode, mask = classes["border"]
    holes = ndi.binary_fill_holes(mask) & ~mask
    hole_labels, _ = ndi.label(holes)
    sizes = np.bincount(hole_labels.ravel())[1:]
    density = (sizes < 0.002 * gray.size).sum() / mask.sum() * 1e4
    return ("lung", mode, cfg.lung_hu) if density > cfg.lung_hole_density else ("air", mode, cfg.air_hu)


def estimate_gray_to_hu(gray: np.ndarray, *, source: str = "<array>", config: GrayMapConfig = GrayMapConfig()
                        ) -> GrayToHU:
    """Estimate the gray -> HU map of one 8-bit windowed CT image ``[H, W]``.

    Raises:
        GrayMapError: not a 2-D uint8 array, or no plausible map (message names the reason).
    """
    cfg = config
    if not isinstance(gray, np.ndarray) or gray.dtype != np.uint8 or gray.ndim != 2:
        raise GrayMapError(f"{source}: array of shape {getattr(gray, 'shape', None)} dtype "
                           f"{getattr(gray, 'dtype', type(gray).__name__)}; expected a 2-D uint8 image [H, W]")
    counts = np.bincount(gray.ravel(), minlength=256).astype(float)
    b = cfg.black_gray
    interior = counts[b + 1:255].sum()
    if interior < cfg.min_unsaturated_fraction * gray.size:
        raise GrayMapError(f"{source}: only {interior / gray.size:.1%} of the pixels lie in gray {b + 1}..254; "
                           f"expected >= {cfg.min_unsaturated_fraction:.0%} unsaturated")
    smooth = gaussian_filter1d(np.r_[np.zeros(b), counts[b + 1:255]], cfg.smoothing_gray)
    prominence = max(cfg.min_peak_prominence * smooth.max(), cfg.min_peak_fraction * interior)
    idx, props = find_peaks(np.r_[0.0, smooth, 0.0], prominence=prominence)
    peaks, prom = idx.astype(float), props["prominences"]  # padded index == gray level
    if peaks.size < 2:
        raise GrayMapError(f"{source}: {peaks.size} histogram peak(s) at gray {peaks.astype(int).tolist()}; "
                           "expected an air/lung and a soft-tissue peak, or fat and muscle peaks")
    zero = gray <= b
    labels, _ = ndi.label(zero)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed_zero = (zero & ~np.isin(labels, edge[edge > 0])).sum() / gray.size
    darkest = counts[b + 1:int(1.5 * peaks[0] - 0.5 * b) + 1].sum() / gray.size  # up to just past the darkest peak
    if enclosed_zero >= max(cfg.saturated_air_fraction, darkest):
        fat, muscle = np.sort(peaks[np.argsort(prom)[-2:]])
        marks = [("fat", fat, cfg.fat_hu), ("muscle", muscle, cfg.muscle_hu)]
    else:
        cut = int(np.argmax(np.diff(peaks)))
        dark_peaks, bright, bright_prom = peaks[: cut + 1], peaks[cut + 1:], prom[cut + 1:]
        tissue = bright[np.argmax(bright_prom)]
        dark = _dark_landmark(gray, (dark_peaks[-1] + bright[0]) / 2, cfg, tissue - dark_peaks[0])
        if dark[1] >= tissue:
            raise GrayMapError(f"{source}: no air/lung peak below the soft-tissue peak (darkest class at gray "
                               f"{dark[1]:.0f}, tissue at {tissue:.0f}); expected air/lung darker than tissue")
        slope0 = (tissue - dark[1]) / (cfg.soft_tissue_hu - dark[2])  # gray per HU
        expected = (cfg.muscle_hu - cfg.fat_hu) * slope0
        lo_r, hi_r = cfg.fat_muscle_ratio
        # companion (fat or muscle) peak: searched with a lower prominence, it is often a small peak beside a large one
        weak, weak_props = find_peaks(np.r_[0.0, smooth, 0.0], prominence=prominence * cfg.companion_prominence)
        pair = [(q, w) for q, w in zip(weak.astype(float), weak_props["prominences"])
                if q != tissue and q > dark[1] and lo_r * expected <= abs(q - tissue) <= hi_r * expected]
        marks = [dark]
        if pair:
            other = max(pair, key=lambda item: item[1])[0]
            marks += [("fat", min(tissue, other), cfg.fat_hu), ("muscle", max(tissue, other), cfg.muscle_hu)]
        else:
            marks.append(("soft_tissue", tissue, cfg.soft_tissue_hu))
    g = np.array([m[1] for m in marks])
    h = np.array([m[2] for m in marks])
    slope, intercept = np.polyfit(g, h, 1)
    method = "+".join(m[0] for m in marks)
    residual = np.abs(slope * g + intercept - h).max()
    if residual > cfg.max_residual_hu:
        raise GrayMapError(f"{source}: landmarks {method} at gray {g.tolist()} disagree by {residual:.0f} HU; "
                           f"expected <= {cfg.max_residual_hu:.0f} HU")
    lo, hi = intercept, intercept + 255 * slope
    width, level = hi - lo, (lo + hi) / 2
    if not (cfg.width_hu[0] <= width <= cfg.width_hu[1] and cfg.level_hu[0] <= level <= cfg.level_hu[1]):
        raise GrayMapError(f"{source}: {method} landmarks at gray {g.tolist()} give window W {width:.0f} L "
                           f"{level:.0f} HU; expected W in {cfg.width_hu}, L in {cfg.level_hu}")
    white = counts[255] / gray.size
    if white >= cfg.max_white_fraction and hi > cfg.max_white_top_hu:
        raise GrayMapError(f"{source}: {white:.0%} of the pixels saturated at 255 but {method} puts gray 255 at "
                           f"{hi:.0f} HU; expected soft tissue (saturated) to be no peak, so no usable tissue landmark")
    landmarks = tuple((str(n), float(x), float(y)) for n, x, y in marks)
    return GrayToHU(float(slope), float(intercept), method, landmarks)


def gray_image_to_hu(gray: np.ndarray, *, source: str = "<array>", config: GrayMapConfig = GrayMapConfig()
                     ) -> tuple[np.ndarray, GrayToHU]:
    """Convenience: ``(int16 HU [H, W], map)`` of one 8-bit image."""
    mapping = estimate_gray_to_hu(gray, source=source, config=config)
    return mapping.apply(gray), mapping
