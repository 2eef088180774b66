"""3-D lung mask of a whole chest CT series, computed once per request at reduced resolution.

Method: Hu, Hoffman and Reinhardt, "Automatic lung segmentation for accurate quantitation
of volumetric X-ray CT images", IEEE Transactions on Medical Imaging 20(6):490-498 (2001).
Kept from it: the body/background separation before thresholding, the iterative
("optimal") threshold between the low-density and the dense voxels inside the body,
3-D connected components of the low-density voxels, removal of the trachea and main
bronchi by 3-D region growing from a seed found in the upper slices, with a leak check,
and the left/right separation along the anterior junction. Changed: the work grid is
block-averaged in-plane (``LungSegmentationConfig.mask_size``, 128 by default: 4 x 4 blocks
of a 512 x 512 slice), the threshold is clamped to a configured range, the airway
threshold rises in fixed 25 HU steps and growth stops before the step that leaks, the
junction is found per slice as the column of least lung in the central band (not by
dynamic programming), and the final smoothing is a 2-D hole fill per slice (vessels
and enclosed lesions become lung) instead of a morphological closing. Added: gas
pockets outside the lungs (stomach, bowel, table hollows) are rejected per 3-D
component by volume, craniocaudal extent and density (a lung holds parenchyma; a gas
pocket is mostly pure air).

Steps on the block-averaged grid ``v`` (HU, int16 ``[N, h, w]``, ``h = H // factor``):

1. **Body**: the largest 3-D component of ``v >= body_threshold_hu``, filled per slice
   (2-D holes: lungs, airways, gas). The CT table and the air around the patient, with
   the table's hollows, lie outside it.
2. **Low density inside the body**: ``v < T`` inside the filled body, ``T`` the iterative
   threshold ``T = (mean below T + mean above T) / 2`` of the body's voxels, clamped to
   ``lung_threshold_range_hu``.
3. **Airways**: region growing with a rising threshold, ``gas_threshold_hu`` (-950 HU)
   to ``airway_threshold_hu`` (-900 HU) in 25 HU steps, restricted to the upper
   ``trachea_search_mm`` + 150 mm of the body and the central columns. The seed is the
   largest 3-D component of very low density that crosses the top ``trachea_search_mm``
   of the body with a tracheal cross-section near the body's centre column; at each
   higher threshold the component holding the seed replaces the tree unless it exceeds
   ``max_airway_ml`` (a leak into the lungs: growth stops at the last good threshold).
   When already the first tree is too large, nothing is removed (``airway_leaked``).
   The tree, widened by one pixel in-plane, is removed from the low-density voxels
   (and again after the hole fill of step 4).
4. **Lungs**: 3-D components (6-connected) of what is left that hold at least
   ``min_component_ml``, span at least ``min_component_extent_mm`` craniocaudally and
   have at most ``max_component_air_fraction`` of pure-air voxels. Their union is filled
   per slice.
5. **Right / left**: per slice, the junction column is the middle of the columns with the
   least lung inside the central band (the body's centre column +- 15 % of the grid
   width); columns before it (patient right in DICOM axial order) are label 1, after it 2.

Statistics for the plausibility checks (:mod:`covidct.preprocessing.assessment`) are measured on
the same grid: outside-air and body-tissue HU, a histogram of body-tissue HU, the body's
centre and the spine (the most persistent bone position over the lung slices).

Where it runs: the block averaging reads the full-resolution volume and runs with torch on
the input's device (a CUDA tensor on a GPU instance); everything after it runs on a host
copy of the grid (1/16 of the voxels of a 512 x 512 series, int16: 13.3 MB against the
volume's 213 MB at 406 slices), with scipy: the 3-D connected components, hole fills and
region growing have no torch operation. That host part took 0.25 s for 406 slices on one
core of the development box (``benchmarks/results/cpu-2core/README.md``): on a GPU instance
it is the floor of the ``preprocess`` step.

Cost per slice: ``benchmarks/bench_assessment.py``, results in ``benchmarks/results/``.
The grid helpers live in :mod:`covidct.preprocessing.mask_grid`, the airway tree in
:mod:`covidct.preprocessing.airways`.
Input: HU ``[N, H, W]`` (slices inferior -> superior, rows anterior -> posterior, columns
patient right -> left), spacing ``(z, y, x)`` mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from covidct.errors import VolumeError
from covidct.preprocessing.airways import airway_tree
from covidct.preprocessing.config import LungSegmentationConfig
from covidct.preprocessing.devices import ArrayLike, as_tensor, dtype_name, to_numpy
from covidct.preprocessing.mask_grid import STRUCT_2D, block_mean, bounding_box, fill_slices, reduction_factor

#: Bin edges (HU) of :attr:`LungSegmentation.tissue_histogram`; values outside go to the end bins.
TISSUE_HIST_EDGES = np.arange(-1100.0, 3110.0, 10.0)
#: Half width of the band searched for the left/right junction, fraction of the grid width.
JUNCTION_BAND = 0.15
#: A constant grid value below this (HU) is padding outside the reconstruction circle.
PADDING_BELOW_HU = -1024
#: In-plane stride of the grid sample the HU statistics are measured on.
STATS_STRIDE = 4
#: At most this many lung slices (evenly spread) are searched for the spine.
SPINE_SLICES = 48


@dataclass(frozen=True)
class LungSegmentation:
    """Lung mask of one series on the reduced grid, with what the checks measure.

    Attributes:
        labels: uint8 ``[N, h, w]``: 0 background, 1 right lung, 2 left lung.
        spacing_mm: ``(z, y, x)`` mm of the grid (in-plane spacing x ``factor``).
        factor: in-plane reduction; grid pixel ``(r, c)`` is the block of source rows
            ``r*factor .. r*factor+factor-1`` and the same columns (trailing rows/columns
            that do not fill a block are dropped).
        source_shape: ``(N, H, W)`` of the HU volume.
        body: bool ``[N, h, w]``, the filled body.
        lung_slices: int32 ``[L]``, ascending indices of slices holding lung.
        lung_area_mm2: float64 ``[N]``, lung area per slice (mm^2).
        lung_volume_ml, right_volume_ml, left_volume_ml: lung volumes (ml).
        lung_threshold_hu: the iterative lung threshold used (HU).
        body_volume_ml: filled body volume (ml); body_slices: slices holding body.
        body_centre_px: ``(row, col)`` on the grid, mean over the lung slices (all body
            slices when there is no lung); NaN without body.
        spine_px: ``(row, col)`` on the grid of the most persistent bone; NaN without bone.
        air_hu: median HU outside the body (1st percentile of the grid when no outside
            voxel exists); padding (a constant minimum below -1024 HU) is ignored.
        tissue_hu: median HU of body voxels between ``body_threshold_hu`` and bone.
        tissue_histogram: int64 counts of body voxels at or above the lung threshold, bins
            :data:`TISSUE_HIST_EDGES` (HU).
        airway_volume_ml: removed trachea and main bronchi (ml); airway_leaked: growth
            leaked at every threshold (nothing removed).
        component_centroids_px: ``(row, col)`` of the kept lung components, largest first.
        component_volumes_ml: their volumes (ml) before the hole fill, largest first.
    """

    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    factor: int
    source_shape: tuple[int, int, int]
    body: np.ndarray
    lung_slices: np.ndarray
    lung_area_mm2: np.ndarray
    lung_volume_ml: float
    right_volume_ml: float
    left_volume_ml: float
    lung_threshold_hu: float
    body_volume_ml: float
    body_slices: int
    body_centre_px: tuple[float, float]
    spine_px: tuple[float, float]
    air_hu: float
    tissue_hu: float
    tissue_histogram: np.ndarray
    airway_volume_ml: float
    airway_leaked: bool
    component_centroids_px: tuple[tuple[float, float], ...]
    component_volumes_ml: tuple[float, ...]

    @property
    def lung(self) -> np.ndarray:
        """bool ``[N, h, w]``: both lungs."""
        return self.labels > 0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


def optimal_threshold(values: np.ndarray, limits: tuple[float, float]) -> float:
    """Iterative threshold ``T = (mean(v < T) + mean(v >= T)) / 2`` (HU), clamped to ``limits``."""
    low, high = float(limits[0]), float(limits[1])
    if values.size == 0:
        return 0.5 * (low + high)
    clipped = np.clip(values.astype(np.int32), -1100, 3100) + 1100
    hist = np.bincount(clipped.ravel(), minlength=4201).astype(np.float64)
    centres = np.arange(hist.size, dtype=np.float64) - 1100.0
    weighted = np.cumsum(hist * centres)
    counts = np.cumsum(hist)
    threshold = 0.5 * (low + high)
    for _ in range(30):
        k = int(np.clip(np.ceil(threshold) + 1100, 1, hist.size - 1))  # bins below T: [0, k)
        n_low, n_high = counts[k - 1], counts[-1] - counts[k - 1]
        if n_low == 0 or n_high == 0:
            break
        mean_low = weighted[k - 1] / n_low
        mean_high = (weighted[-1] - weighted[k - 1]) / n_high
        new = 0.5 * (mean_low + mean_high)
        if abs(new - threshold) < 0.5:
            threshold = new
            break
        threshold = new
    return float(np.clip(threshold, low, high))


def _split(lung: np.ndarray, centre_col: float) -> np.ndarray:
    """uint8 labels: per slice, columns before the junction column are 1 (right), after it 2."""
    n, h, w = lung.shape
    labels = np.zeros(lung.shape, dtype=np.uint8)
    if not lung.any():
        return labels
    counts = np.count_nonzero(lung, axis=1)  # [N, w]
    half = max(1, int(round(JUNCTION_BAND * w)))
    mid = int(round(centre_col)) if np.isfinite(centre_col) else w // 2
    c0, c1 = max(0, mid - half), min(w, mid + half + 1)
    band = counts[:, c0:c1]
    is_min = band == band.min(axis=1, keepdims=True)
    # Middle of the run of least-lung columns: mean position of the minima.
    junction = c0 + (is_min * np.arange(c1 - c0)).sum(axis=1) / np.maximum(is_min.sum(axis=1), 1)
    right = np.arange(w)[None, None, :] < junction[:, None, None]
    labels[lung & right] = 1
    labels[lung & ~right] = 2
    return labels


def _spine(bone: np.ndarray, spacing_x: float) -> tuple[float, float]:
    """(row, col) of the most persistent bone position of ``bone`` ``[K, h, w]``; NaN if none."""
    if bone.size == 0:
        return float("nan"), float("nan")
    occurrence = bone.sum(axis=0, dtype=np.float32)
    if occurrence.max(initial=0.0) <= 0:
        return float("nan"), float("nan")
    size = int(np.clip(round(20.0 / spacing_x), 1, 15)) if np.isfinite(20.0 / spacing_x) else 1
    smooth = ndimage.uniform_filter(occurrence, size=size, mode="constant")
    r, c = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return float(r), float(c)


def _check_input(
    hu: ArrayLike, spacing_mm: tuple[float, float, float],
) -> tuple[torch.Tensor, tuple[float, float, float]]:
    array = as_tensor(hu, what="segment_lungs: hu")
    if array.ndim != 3 or 0 in array.shape:
        raise VolumeError(f"segment_lungs: hu must be a non-empty [N, H, W] stack; got shape {tuple(array.shape)}")
    if array.dtype == torch.bool or array.is_complex():
        raise VolumeError(f"segment_lungs: hu has dtype {dtype_name(array)}; expected int16 (or numeric) HU")
    if array.dtype != torch.int16:
        array = torch.nan_to_num(array.double()).clamp(-32768, 32767).to(torch.int16)
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"segment_lungs: spacing_mm={spacing_mm!r}; expected three positive mm values") from exc
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise VolumeError(
            f"segment_lungs: spacing_mm={spacing_mm!r}; expected three finite positive mm values (z, y, x)"
        )
    return array, spacing  # type: ignore[return-value]


def segment_lungs(
    hu: ArrayLike, spacing_mm: tuple[float, float, float],
    config: LungSegmentationConfig = LungSegmentationConfig(),
) -> LungSegmentation:
    """Right/left lung labels of HU ``[N, H, W]`` on a grid reduced to about ``config.mask_size``.

    Never fails on content (all air, noise, one slice, no lungs give empty masks and the
    statistics :mod:`covidct.preprocessing.assessment` judges).

    Raises:
        VolumeError: ``hu`` is not a non-empty numeric ``[N, H, W]`` stack, or ``spacing_mm``
            is not three finite positive numbers.
    """
    array, spacing = _check_input(hu, spacing_mm)
    factor = reduction_factor(array.shape[1], array.shape[2], config.mask_size)
    v = to_numpy(block_mean(array, factor))  # the reduced grid, on the host from here on
    dz, dy, dx = spacing[0], spacing[1] * factor, spacing[2] * factor
    grid = (dz, dy, dx)
    voxel_ml = dz * dy * dx / 1000.0

    body = fill_slices(_largest_component(v >= config.body_threshold_hu))
    # Statistics on every fourth grid pixel in-plane (a 16x smaller sample, same medians).
    v_sample, body_sample = v[:, ::STATS_STRIDE, ::STATS_STRIDE], body[:, ::STATS_STRIDE, ::STATS_STRIDE]
    threshold = optimal_threshold(v_sample[body_sample], config.lung_threshold_range_hu)
    low = body & (v < threshold)

    airway, leaked = airway_tree(low, v, body, grid, config)
    airway_box = bounding_box(airway, margin=1)
    widened = None
    if airway_box is not None:
        widened = ndimage.binary_dilation(airway[airway_box], STRUCT_2D)
        low[airway_box] &= ~widened
    lung, centroids, volumes = _lung_components(low, v, grid, config)
    lung = fill_slices(lung) & body
    if widened is not None:  # bronchi enclosed by lung are holes the fill closed: open them again
        lung[airway_box] &= ~widened
    slice_area = np.count_nonzero(lung, axis=(1, 2))
    lung_slices = np.flatnonzero(slice_area).astype(np.int32)

    zsel = lung_slices if lung_slices.size else np.flatnonzero(body.any(axis=(1, 2)))
    centre = _centre(body[zsel])
    labels = _split(lung, centre[1])
    zspine = zsel[np.unique(np.linspace(0, zsel.size - 1, min(zsel.size, SPINE_SLICES)).astype(int))]
    spine = _spine((v[zspine] >= config.bone_threshold_hu) & body[zspine], dx)

    air, tissue_hu, hist = _hu_statistics(v_sample, body_sample, threshold, config)
    right = np.count_nonzero(labels == 1)
    counts = (0.0, float(right), float(slice_area.sum() - right))
    return LungSegmentation(
        labels=labels, spacing_mm=grid, factor=factor, source_shape=tuple(array.shape),  # type: ignore[arg-type]
        body=body, lung_slices=lung_slices, lung_area_mm2=slice_area.astype(np.float64) * dy * dx,
        lung_volume_ml=float((counts[1] + counts[2]) * voxel_ml),
        right_volume_ml=float(counts[1] * voxel_ml), left_volume_ml=float(counts[2] * voxel_ml),
        lung_threshold_hu=threshold, body_volume_ml=float(np.count_nonzero(body) * voxel_ml),
        body_slices=int(body.any(axis=(1, 2)).sum()), body_centre_px=centre, spine_px=spine,
        air_hu=air, tissue_hu=tissue_hu, tissue_histogram=hist,
        airway_volume_ml=float(np.count_nonzero(airway) * voxel_ml), airway_leaked=leaked,
        component_centroids_px=centroids, component_volumes_ml=volumes,
    )


def _hu_statistics(
    v: np.ndarray, body: np.ndarray, threshold: float, config: LungSegmentationConfig,
) -> tuple[float, float, np.ndarray]:
    """(air HU, tissue HU, tissue histogram) of grid HU ``v`` and its filled ``body`` mask.

    Air: median outside the body, ignoring padding (the grid's minimum when it is below
    ``PADDING_BELOW_HU``), or the 1st percentile of the grid when fewer than 16 outside
    voxels exist. Tissue: median of body voxels in
    ``[body_threshold_hu, bone_threshold_hu)``. Histogram: body voxels at or above the lung
    threshold, bins :data:`TISSUE_HIST_EDGES`.
    """
    outside = v[~body]
    lowest = int(v.min())
    if lowest < PADDING_BELOW_HU:
        outside = outside[outside != lowest]  # padding outside the reconstruction circle
    air = _median(outside) if outside.size >= 16 else float(np.percentile(v, 1.0))
    inside = v[body]
    dense = inside[inside >= threshold]
    soft = dense[(dense >= config.body_threshold_hu) & (dense < config.bone_threshold_hu)]
    lo, step = TISSUE_HIST_EDGES[0], TISSUE_HIST_EDGES[1] - TISSUE_HIST_EDGES[0]
    bins = np.clip((dense.astype(np.float64) - lo) // step, 0, TISSUE_HIST_EDGES.size - 2).astype(np.intp)
    hist = np.bincount(bins, minlength=TISSUE_HIST_EDGES.size - 1).astype(np.int64)
    return air, _median(soft), hist


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """(row, col) mean position of a bool ``[K, h, w]`` mask; NaN when empty."""
    if mask.size == 0:
        return float("nan"), float("nan")
    rows = np.count_nonzero(mask, axis=(0, 2)).astype(np.float64)
    cols = np.count_nonzero(mask, axis=(0, 1)).astype(np.float64)
    total = rows.sum()
    if total == 0:
        return float("nan"), float("nan")
    return (float(rows @ np.arange(rows.size) / total), float(cols @ np.arange(cols.size) / total))


def _lung_components(
    low: np.ndarray, v: np.ndarray, spacing: tuple[float, float, float], config: LungSegmentationConfig,
) -> tuple[np.ndarray, tuple[tuple[float, float], ...], tuple[float, ...]]:
    """(bool lungs, centroids, volumes): 3-D components of ``low`` that are lung-like (module docstring).

    Centroids ``(row, col)`` on the grid and volumes (ml) of the kept components, largest first.
    """
    lung = np.zeros_like(low)
    box = bounding_box(low)
    if box is None:
        return lung, (), ()
    sub = low[box]
    labels, count = ndimage.label(sub)
    dz, dy, dx = spacing
    size = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
    gas = np.bincount(labels[sub & (v[box] < config.gas_threshold_hu)], minlength=count + 1)
    objects = ndimage.find_objects(labels)
    extent = np.zeros(count + 1)
    extent[1:] = [(o[0].stop - o[0].start) * dz if o is not None else 0.0 for o in objects]
    keep = ((size * (dz * dy * dx / 1000.0) >= config.min_component_ml)
            & (extent >= config.min_component_extent_mm)
            & (gas <= config.max_component_air_fraction * np.maximum(size, 1)))
    keep[0] = False
    lung[box] = keep[labels]
    kept = np.flatnonzero(keep)
    centroids = []
    volumes = tuple(float(v) for v in np.sort(size[kept])[::-1] * (dz * dy * dx / 1000.0))
    for index in kept[np.argsort(-size[kept])]:
        o = objects[index - 1]
        component = labels[o] == index
        rows = np.count_nonzero(component, axis=(0, 2)).astype(np.float64)
        cols = np.count_nonzero(component, axis=(0, 1)).astype(np.float64)
        centroids.append((box[1].start + o[1].start + float(rows @ np.arange(rows.size) / rows.sum()),
                          box[2].start + o[2].start + float(cols @ np.arange(cols.size) / cols.sum())))
    return lung, tuple(centroids), volumes
