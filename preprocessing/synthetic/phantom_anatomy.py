"""Healthy chest anatomy of the synthetic CT phantom, drawn slice by slice.

The anatomy is defined in normalised coordinates: in-plane positions and sizes are
fractions of the slice size ``S`` (so a 64 or a 512 slice shows the same patient), and
the cranio-caudal position is ``t = i / (N - 1)`` (slice ``i`` of ``N``; index 0 is the
most inferior slice, as after sorting DICOM positions ascending). The volume's spacing
sets the size in mm (see :mod:`covidct.preprocessing.synthetic.phantom` for the default adult
geometry: 360 mm field of view, 310 mm scan). Display convention: row 0 is anterior, column 0 the patient's
right.

Structures (HU): air -1000 outside the body; subcutaneous fat ``fat_hu`` (-100);
muscle/mediastinum ``muscle_hu`` (+40); vertebra, ribs and sternum (cortex ``bone_cortex_hu``
+900, marrow ``bone_marrow_hu`` +450); two lungs (parenchyma -880..-830 with a posterior
gradient) whose cross-section opens above the diaphragm domes and closes at the apex
(the first ~10-15 % and last ~8-12 % of slices show no or tiny lungs), the heart
carving the medial lungs, trachea and main bronchi (air), and pulmonary vessels (+40)
and small bronchi (air with a wall) running from each hilum to the periphery.

Each patient (:class:`Geometry`) is drawn from a seeded generator; lungs sit so that
paper 002's region (rows 240..340, columns 120..370 of 512) covers their middle on
open-lung slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from covidct.preprocessing.synthetic.lesion_model import LesionConfig


@dataclass(frozen=True)
class PhantomConfig:
    """Tissue HU, noise and lesion settings of the phantom.

    lesion_radius_frac: in-plane lesion semi-axis range as a fraction of the slice size.
    lesion_z_frac: lesion semi-axis along z as a fraction of the lungs' slice extent.
    """

    noise_hu: float = 15.0
    air_hu: float = -1000.0
    fat_hu: float = -100.0
    muscle_hu: float = 40.0
    bone_cortex_hu: float = 900.0
    bone_marrow_hu: float = 450.0
    parenchyma_hu: tuple[float, float] = (-880.0, -830.0)
    parenchyma_gradient_hu: float = 30.0
    vessel_hu: float = 40.0
    vessels_per_lung: tuple[int, int] = (55, 80)
    lesions: LesionConfig = field(default_factory=LesionConfig)
    lesion_radius_frac: tuple[float, float] = (0.035, 0.075)
    lesion_z_frac: tuple[float, float] = (0.05, 0.14)


@dataclass(frozen=True)
class Lung:
    """One lung: centre/semi-axes (fractions of S), z extent (``t``), dome top (``u``)."""

    cx: float
    cy: float
    ax: float
    ay: float
    t_base: float
    t_apex: float
    u_dome: float
    medial: float  # +1 when the mediastinum is at larger x (right lung), else -1


@dataclass(frozen=True)
class Track:
    """A vessel or small bronchus: straight line from the hilum to a peripheral point.

    Points are (x, y) fractions of S and ``u`` (normalised lung height), radii fractions.
    """

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    r_start: float
    r_end: float
    airway: bool


@dataclass(frozen=True)
class Geometry:
    body: tuple[float, float, float, float]  # cx, cy, ax, ay
    muscle_scale: float
    lungs: tuple[Lung, Lung]
    parenchyma_hu: float
    heart: tuple[float, float, float, float]
    u_carina: float
    rib_angles: tuple[float, ...]
    rib_phases: tuple[float, ...]
    rib_period: float
    tracks: tuple[tuple[Track, ...], tuple[Track, ...]]


def lung_profile(lung: Lung, t: float) -> tuple[float, float]:
    """(u, outline scale) of a lung at height ``t``; scale 0 outside the lung."""
    u = (t - lung.t_base) / (lung.t_apex - lung.t_base)
    if u <= 0.0 or u >= 1.0:
        return u, 0.0
    if u > 0.55:
        return u, float(np.sqrt(max(0.0, 1.0 - ((u - 0.55) / 0.45) ** 2)))
    if u < 0.2:
        return u, 0.88 + 0.12 * u / 0.2
    return u, 1.0


def _lung_point(lung: Lung, u: float, rng: np.random.Generator) -> tuple[float, float, float]:
    scale = lung_profile(lung, lung.t_base + u * (lung.t_apex - lung.t_base))[1]
    phi = rng.uniform(0, 2 * np.pi)
    rad = np.sqrt(rng.uniform(0.25, 0.9)) * max(scale, 0.2)
    return (lung.cx + rad * lung.ax * np.cos(phi), lung.cy + rad * lung.ay * np.sin(phi), u)


def draw_geometry(rng: np.random.Generator, config: PhantomConfig) -> Geometry:
    """One patient's anatomy (seeded variation of sizes, positions and extents)."""
    cx_b, cy_b = 0.5, 0.53 + rng.uniform(-0.015, 0.015)
    ax_b, ay_b = 0.44 * rng.uniform(0.94, 1.04), 0.34 * rng.uniform(0.94, 1.04)
    lungs = []
    for medial, u_dome in ((1.0, rng.uniform(0.28, 0.34)), (-1.0, rng.uniform(0.22, 0.28))):
        lungs.append(Lung(
            cx=0.5 - medial * rng.uniform(0.19, 0.215), cy=cy_b + rng.uniform(0.0, 0.03),
            ax=rng.uniform(0.13, 0.16), ay=rng.uniform(0.19, 0.23),
            t_base=rng.uniform(0.07, 0.11), t_apex=rng.uniform(0.88, 0.93),
            u_dome=u_dome, medial=medial,
        ))
    tracks = []
    for lung in lungs:
        hilum = (lung.cx + lung.medial * 0.55 * lung.ax, lung.cy - 0.1 * lung.ay, 0.5)
        items = []
        for _ in range(int(rng.integers(config.vessels_per_lung[0], config.vessels_per_lung[1] + 1))):
            airway = bool(rng.uniform() < 0.15)
            r0 = rng.uniform(0.006, 0.011)
            items.append(Track(start=hilum, end=_lung_point(lung, rng.uniform(0.08, 0.95), rng),
                               r_start=r0, r_end=r0 * rng.uniform(0.2, 0.4), airway=airway))
        tracks.append(tuple(items))
    # Rib angles on the body ellipse (0 = patient's left, pi/2 = spine, -pi/2 = sternum).
    angles = np.array([-2.5, -2.1, -1.0, -0.6, -0.2, 0.25, 0.7, 1.1, 2.04, 2.44, 2.89, 3.34])
    return Geometry(
        body=(cx_b, cy_b, ax_b, ay_b), muscle_scale=1.0 - rng.uniform(0.06, 0.11),
        lungs=(lungs[0], lungs[1]), parenchyma_hu=float(rng.uniform(*config.parenchyma_hu)),
        heart=(0.535 + rng.uniform(-0.01, 0.01), 0.47 + rng.uniform(-0.01, 0.01),
               rng.uniform(0.13, 0.16), rng.uniform(0.11, 0.13)),
        u_carina=rng.uniform(0.60, 0.66), rib_angles=tuple(angles.tolist()),
        rib_phases=tuple(rng.uniform(0, 1, size=angles.size).tolist()),
        rib_period=rng.uniform(0.085, 0.11), tracks=(tracks[0], tracks[1]),
    )


def ellipse_mask(rows: np.ndarray, cols: np.ndarray, cy: float, cx: float, ay: float, ax: float) -> np.ndarray:
    """bool ``[len(rows), len(cols)]``: pixel centres inside the ellipse (pixels)."""
    return (((rows - cy) / ay) ** 2)[:, None] + (((cols - cx) / ax) ** 2)[None, :] < 1.0


def draw_disc(image: np.ndarray, cy: float, cx: float, r: float, value: float,
              where: np.ndarray | None = None) -> None:
    """Set a disc (centre/radius in pixels) of ``image`` to ``value`` (optionally masked)."""
    h, w = image.shape
    r0, r1 = max(0, int(cy - r - 1)), min(h, int(cy + r + 2))
    c0, c1 = max(0, int(cx - r - 1)), min(w, int(cx + r + 2))
    if r0 >= r1 or c0 >= c1:
        return
    inside = ellipse_mask(np.arange(r0, r1) + 0.0, np.arange(c0, c1) + 0.0, cy, cx, max(r, 0.5), max(r, 0.5))
    if where is not None:
        inside &= where[r0:r1, c0:c1]
    image[r0:r1, c0:c1][inside] = value


def _capsule(image: np.ndarray, p: np.ndarray, q: np.ndarray, r: float, value: float,
             where: np.ndarray) -> None:
    """Set pixels within ``r`` of segment p-q ((x, y) pixels) to ``value`` where ``where``."""
    h, w = image.shape
    r0, r1 = max(0, int(min(p[1], q[1]) - r - 1)), min(h, int(max(p[1], q[1]) + r + 2))
    c0, c1 = max(0, int(min(p[0], q[0]) - r - 1)), min(w, int(max(p[0], q[0]) + r + 2))
    if r0 >= r1 or c0 >= c1:
        return
    ys = np.arange(r0, r1, dtype=np.float32)[:, None]
    xs = np.arange(c0, c1, dtype=np.float32)[None, :]
    d = q - p
    length2 = float(d @ d)
    s = np.zeros(1) if length2 == 0 else np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / length2, 0, 1)
    dist2 = (xs - p[0] - s * d[0]) ** 2 + (ys - p[1] - s * d[1]) ** 2
    inside = (dist2 <= max(r, 0.6) ** 2) & where[r0:r1, c0:c1]
    image[r0:r1, c0:c1][inside] = value


def torso_template(geom: Geometry, config: PhantomConfig, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Static part of every slice: (float32 HU ``[S, S]``, bool rib-cage interior ``[S, S]``)."""
    idx = np.arange(size, dtype=np.float64)
    cx, cy, ax, ay = (v * size for v in geom.body)
    m = geom.muscle_scale
    image = np.full((size, size), config.air_hu, dtype=np.float32)
    image[ellipse_mask(idx, idx, cy, cx, ay, ax)] = config.fat_hu
    image[ellipse_mask(idx, idx, cy, cx, ay * m, ax * m)] = config.muscle_hu
    spine_y = cy + 0.52 * ay * m
    draw_disc(image, spine_y, cx, 0.045 * size, config.bone_cortex_hu)
    draw_disc(image, spine_y, cx, 0.036 * size, config.bone_marrow_hu)
    draw_disc(image, spine_y + 0.072 * size, cx, 0.022 * size, config.muscle_hu - 10.0)  # canal
    rows = idx[:, None]
    process = (((rows - (spine_y + 0.125 * size)) / (0.03 * size)) ** 2
               + ((idx[None, :] - cx) / (0.012 * size)) ** 2) < 1.0
    image[process] = config.bone_cortex_hu
    cage = ellipse_mask(idx, idx, cy, cx, ay * m * 0.88, ax * m * 0.88)
    return image, cage


def render_slice(geom: Geometry, config: PhantomConfig, template: np.ndarray, cage: np.ndarray,
                 t: float, slice_step_t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clean (noise-free) slice at height ``t``.

    Returns:
        (float32 HU ``[S, S]``, bool lung ``[S, S]``, bool airway ``[S, S]``): the airway is
        the trachea or the main bronchi (air) and is removed from the lung mask; small
        intrapulmonary bronchi stay part of the lung.
    """
    size = template.shape[0]
    image = template.copy()
    lung_mask = np.zeros((size, size), dtype=bool)
    idx = np.arange(size, dtype=np.float64)
    cy_b, ay_b = geom.body[1] * size, geom.body[3] * size
    hx, hy, hax, hay = (v * size for v in geom.heart)
    for lung in geom.lungs:
        u, scale = lung_profile(lung, t)
        if scale <= 0.0:
            continue
        apex = max(0.0, (u - 0.55) / 0.45)
        cx = (lung.cx + lung.medial * 0.03 * apex) * size
        cy = (lung.cy + 0.04 * apex) * size
        ax, ay = lung.ax * scale * size, lung.ay * scale * size
        r0, r1 = max(0, int(cy - ay - 1)), min(size, int(cy + ay + 2))
        c0, c1 = max(0, int(cx - ax - 1)), min(size, int(cx + ax + 2))
        rows, cols = idx[r0:r1], idx[c0:c1]
        region = ellipse_mask(rows, cols, cy, cx, ay, ax) & cage[r0:r1, c0:c1]
        if u < lung.u_dome:
            dome = 1.08 * np.sqrt(1.0 - (u / lung.u_dome) ** 2)
            region &= ~ellipse_mask(rows, cols, cy - 0.12 * ay, cx, ay * dome, ax * dome)
        if 0.08 < u < 0.55:
            beat = 0.55 + 0.45 * np.sin(np.pi * (u - 0.08) / 0.47)
            region &= ~ellipse_mask(rows, cols, hy, hx, hay * beat, hax * beat)
        lung_mask[r0:r1, c0:c1] |= region
    if lung_mask.any():
        gradient = geom.parenchyma_hu + config.parenchyma_gradient_hu * (idx - cy_b) / ay_b
        values = np.broadcast_to(gradient[:, None], (size, size))
        image[lung_mask] = values[lung_mask]
        _draw_tracks(image, geom, config, lung_mask, t, slice_step_t)
    airway = np.zeros((size, size), dtype=bool)
    _draw_airways(image, airway, geom, config, t)
    lung_mask &= ~airway
    _draw_ribs(image, geom, config, t)
    return image, lung_mask, airway


def _draw_tracks(image: np.ndarray, geom: Geometry, config: PhantomConfig, lung_mask: np.ndarray,
                 t: float, slice_step_t: float) -> None:
    """Vessels (+40 HU) and small bronchi (air in a -100 HU wall) crossing this slice."""
    size = image.shape[0]
    for lung, tracks in zip(geom.lungs, geom.tracks):
        span = lung.t_apex - lung.t_base
        u = (t - lung.t_base) / span
        half = 0.5 * slice_step_t / span
        for track in tracks:
            u0, u1 = track.start[2], track.end[2]
            if not min(u0, u1) - half <= u <= max(u0, u1) + half:
                continue
            du = u1 - u0
            f = np.clip(np.array([(u - half - u0), (u + half - u0)]) / (du if abs(du) > 1e-9 else 1e-9), 0, 1)
            start, end = np.array(track.start[:2]), np.array(track.end[:2])
            p, q = (start + f[0] * (end - start)) * size, (start + f[1] * (end - start)) * size
            r = (track.r_start + float(f.mean()) * (track.r_end - track.r_start)) * size
            if track.airway:
                if r < 1.5:
                    continue
                _capsule(image, p, q, r, config.fat_hu, lung_mask)
                _capsule(image, p, q, 0.6 * r, config.air_hu, lung_mask)
            else:
                _capsule(image, p, q, r, config.vessel_hu, lung_mask)


def _draw_airways(image: np.ndarray, airway: np.ndarray, geom: Geometry, config: PhantomConfig,
                  t: float) -> None:
    """Trachea above the carina and the two main bronchi below it (air, HU -1000)."""
    size = image.shape[0]
    right, left = geom.lungs
    t_base = 0.5 * (right.t_base + left.t_base)
    t_apex = 0.5 * (right.t_apex + left.t_apex)
    u = (t - t_base) / (t_apex - t_base)
    cx = geom.body[0] * size
    ty = (geom.body[1] - 0.14) * size
    if u >= geom.u_carina:
        draw_disc(airway, ty, cx, 0.028 * size, True)
    elif u >= geom.u_carina - 0.12:
        f = (geom.u_carina - u) / 0.12
        for side in (-1.0, 1.0):
            draw_disc(airway, ty + 0.05 * f * size, cx + side * (0.02 + 0.12 * f) * size,
                  0.018 * size, True)
    image[airway] = config.air_hu


def _draw_ribs(image: np.ndarray, geom: Geometry, config: PhantomConfig, t: float) -> None:
    """Rib cross-sections on a ring inside the muscle layer, present in bands along z."""
    size = image.shape[0]
    cx, cy, ax, ay = (v * size for v in geom.body)
    ring = geom.muscle_scale * 0.95
    for angle, phase in zip(geom.rib_angles, geom.rib_phases):
        if (t / geom.rib_period + phase) % 1.0 > 0.45:
            continue
        ry, rx = cy + ay * ring * np.sin(angle), cx + ax * ring * np.cos(angle)
        draw_disc(image, ry, rx, 0.012 * size, config.bone_cortex_hu)
        draw_disc(image, ry, rx, 0.006 * size, config.bone_marrow_hu)
    sy = cy - ay * ring
    if 0.3 < t < 0.85:
        draw_disc(image, sy, cx, 0.016 * size, config.bone_cortex_hu)
        draw_disc(image, sy, cx, 0.009 * size, config.bone_marrow_hu)
