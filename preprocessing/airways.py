"""The trachea and main bronchi of a chest CT series on the reduced grid (3-D region growing).

Part of the whole-series lung mask (:mod:`covidct.preprocessing.lung_segmentation`, after Hu,
Hoffman and Reinhardt 2001): the airway tree is grown from a tracheal seed found in the
upper slices, with a threshold that rises while the tree stays below a leak volume.
Arrays are ``[N, h, w]`` on the grid; spacing ``(z, y, x)`` in mm; HU.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from covidct.preprocessing.config import LungSegmentationConfig
from covidct.preprocessing.mask_grid import bounding_box

#: Step (HU) of the rising airway threshold.
AIRWAY_STEP_HU = 25.0
#: How far below the trachea search slab the airway region growing looks (mm), and how
#: far sideways of the seed search band (trachea, carina and main bronchi fit inside).
AIRWAY_REACH_MM = 150.0
AIRWAY_LATERAL_MM = 60.0


def trachea_candidates(
    grown: np.ndarray, count: int, body: np.ndarray, z0: int, spacing: tuple[float, float, float],
    config: LungSegmentationConfig,
) -> np.ndarray:
    """bool ``[count + 1]``: components that look like the trachea in slices ``z0..`` (the slab).

    A candidate crosses at least two slab slices with a median cross-section inside
    ``trachea_area_mm2``, its median column within ``trachea_max_offset_mm`` of the
    body's centre column.
    """
    _, dy, dx = spacing
    slab = grown[z0:]
    k, h, w = slab.shape
    offsets = (np.arange(k)[:, None] * (count + 1) + slab.reshape(k, -1)).ravel()
    area = np.bincount(offsets, minlength=k * (count + 1)).reshape(k, count + 1).astype(np.float64)
    cols = np.broadcast_to(np.arange(w, dtype=np.float64), slab.shape).reshape(-1)
    col_sum = np.bincount(offsets, weights=cols, minlength=k * (count + 1)).reshape(k, count + 1)
    body_cols = body[z0:].sum(axis=1, dtype=np.float64)  # [k, w]
    centre = (body_cols @ np.arange(w)) / np.maximum(body_cols.sum(axis=1), 1)
    offset = np.abs(col_sum / np.maximum(area, 1) - centre[:, None]) * dx
    present = area > 0
    area_mm2 = np.where(present, area * dy * dx, np.nan)
    offset = np.where(present, offset, np.nan)
    enough = present.sum(axis=0) >= 2
    with np.errstate(all="ignore"):
        median_area = np.nanmedian(np.where(enough[None, :], area_mm2, 0.0), axis=0)
        median_offset = np.nanmedian(np.where(enough[None, :], offset, np.inf), axis=0)
    lo_area, hi_area = config.trachea_area_mm2
    ok = enough & (median_area >= lo_area) & (median_area <= hi_area) & (median_offset <= config.trachea_max_offset_mm)
    ok[0] = False
    return ok


def airway_tree(
    low: np.ndarray, v: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float],
    config: LungSegmentationConfig,
) -> tuple[np.ndarray, bool]:
    """(bool airway ``[N, h, w]``, leaked): the trachea and main bronchi
    (see :mod:`covidct.preprocessing.lung_segmentation`).

    Region growing with a rising threshold, from ``gas_threshold_hu`` up to
    ``airway_threshold_hu`` in ``AIRWAY_STEP_HU`` steps: the seed is the largest
    trachea-like component (:func:`trachea_candidates`) at the first threshold that has
    one; at each higher threshold the component holding the seed replaces the tree
    unless it exceeds ``max_airway_ml`` (a leak into the lungs: growth stops there).
    ``leaked`` is True when already the first tree is too large (nothing is removed).
    """
    dz, dy, dx = spacing
    airway = np.zeros_like(low)
    body_slices = np.flatnonzero(body.any(axis=(1, 2)))
    if body_slices.size == 0:
        return airway, False
    top = int(body_slices[-1])
    depth = config.trachea_search_mm / dz
    z_slab = max(0, top - int(min(depth, top)))
    z0 = max(0, top - int(min(depth + AIRWAY_REACH_MM / dz, top)))
    box = bounding_box(body[z0: top + 1])
    if box is None:
        return airway, False
    # In-plane: the body's rows, and columns within reach of the centre column.
    cols = body[z0: top + 1].sum(axis=(0, 1), dtype=np.float64)
    centre = float(cols @ np.arange(cols.size) / max(cols.sum(), 1.0))
    reach = (config.trachea_max_offset_mm + AIRWAY_LATERAL_MM) / dx
    c0 = max(box[2].start, int(centre - reach)) if np.isfinite(reach) else box[2].start
    c1 = min(box[2].stop, int(centre + reach) + 1) if np.isfinite(reach) else box[2].stop
    region = (slice(z0, top + 1), box[1], slice(c0, max(c1, c0 + 1)))
    sub_low, sub_v, sub_body = low[region], v[region], body[region]
    voxel_ml = dz * dy * dx / 1000.0
    seed: tuple[int, int, int] | None = None
    tree: np.ndarray | None = None
    threshold = config.gas_threshold_hu
    while threshold <= config.airway_threshold_hu + 1e-6:
        grown, count = ndimage.label(sub_low & (sub_v < threshold))
        threshold += AIRWAY_STEP_HU
        if count == 0:
            continue
        if seed is None:
            ok = trachea_candidates(grown, count, sub_body, z_slab - z0, spacing, config)
            if not ok.any():
                continue
            volume = np.bincount(grown.ravel(), minlength=count + 1)
            best = int(np.flatnonzero(ok)[np.argmax(volume[ok])])
            component = grown == best
            if volume[best] * voxel_ml > config.max_airway_ml:
                return airway, True
            seed = tuple(int(i) for i in np.argwhere(component)[0])  # type: ignore[assignment]
            tree = component
            continue
        component = grown == grown[seed]
        if component.sum() * voxel_ml > config.max_airway_ml:
            break
        tree = component
    if tree is not None:
        airway[region] = tree
    return airway, False
