"""Synthetic CT series of body regions that are not the chest: abdomen, head, thighs.

A chest CT triage must refuse these (no lungs in the scan). Each generator draws one
seeded patient and returns a :class:`~covidct.preprocessing.volume.CTVolume` (HU int16
``[N, H, W]``, slices ascending from inferior to superior, row 0 anterior, column 0 the
patient's right, ``source_format="array"``, positions ``arange(N) * spacing_z`` mm).

Tissues (HU): air -1000 outside the body, fat -100, muscle and organs +30..+60, bone
cortex +900..+1500, cancellous bone +300..+600, CSF +8, fatty marrow -50. Every volume
has a patient table under the body (carbon shells +200 HU around a foam core -900 HU,
separated from the skin by a 10 mm gap (the pad)) and Gaussian noise of ``NOISE_HU``.

Geometry (mm):

- :func:`make_abdomen`: 400 mm field of view, 240 mm scan; a body about 330 x 240 mm
  with liver, spleen, kidneys, spine, aorta, fluid-filled bowel loops and up to 5-8
  separate bowel gas pockets 30-56 mm across (pure air with an air-fluid level, or
  mottled stool: air bubbles in +20 HU matter), inside the abdominal cavity. Air below
  -500 HU inside the body: 116-181 ml in all, the largest connected region 28-52 ml
  (seeds 0-3, 64-256 pixels).
- :func:`make_head`: 500 mm field of view, 190 mm scan from the maxilla to above the
  vertex; a head about 180 mm wide and 200 mm long with scalp, a three-layer skull
  (+1300 / +600 / +1300 HU), brain (+40 grey, +30 white), ventricles, orbits, and air in
  the maxillary, frontal and ethmoid sinuses and mastoid air cells.
- :func:`make_thighs`: 450 mm field of view, 300 mm scan; two thighs about 150 mm
  across (tapering downwards) with skin fat, muscle with fat septa, femoral vessels and
  femurs (cortex +1400 HU, fatty marrow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidct.errors import ConfigError
from covidct.preprocessing.synthetic.phantom import MIN_SIZE, MIN_SLICES, add_noise
from covidct.preprocessing.synthetic.phantom_anatomy import ellipse_mask
from covidct.preprocessing.volume import CTVolume, make_series_key

__all__ = ["NOISE_HU", "make_abdomen", "make_head", "make_thighs"]

NOISE_HU = 15.0
AIR, FAT, MUSCLE, FLUID = -1000.0, -100.0, 50.0, 15.0
TABLE_SHELL_HU, TABLE_FOAM_HU = 200.0, -900.0


@dataclass(frozen=True)
class _Canvas:
    """One slice in mm: origin at the image centre, y posterior (rows), x to the patient's left."""

    size: int
    pixel_mm: float

    def to_px(self, y_mm: float, x_mm: float) -> tuple[float, float]:
        centre = self.size / 2.0 - 0.5
        return centre + y_mm / self.pixel_mm, centre + x_mm / self.pixel_mm

    def ellipse(self, image: np.ndarray, y: float, x: float, ay: float, ax: float, value: float,
                where: np.ndarray | None = None) -> None:
        """Set the ellipse (centre/semi-axes in mm) of ``image`` to ``value`` (optionally masked)."""
        cy, cx = self.to_px(y, x)
        ry, rx = max(ay / self.pixel_mm, 0.5), max(ax / self.pixel_mm, 0.5)
        r0, r1 = max(0, int(cy - ry - 1)), min(self.size, int(cy + ry + 2))
        c0, c1 = max(0, int(cx - rx - 1)), min(self.size, int(cx + rx + 2))
        if r0 >= r1 or c0 >= c1:
            return
        inside = ellipse_mask(np.arange(r0, r1) + 0.0, np.arange(c0, c1) + 0.0, cy, cx, ry, rx)
        if where is not None:
            inside &= where[r0:r1, c0:c1]
        image[r0:r1, c0:c1][inside] = value

    def mask(self, y: float, x: float, ay: float, ax: float) -> np.ndarray:
        """bool ``[S, S]``: the ellipse (mm)."""
        out = np.zeros((self.size, self.size), dtype=bool)
        self.ellipse(out, y, x, ay, ax, True)
        return out

    def table(self, image: np.ndarray, top_mm: float) -> None:
        """Patient table (curved board, 2 mm shells, 36 mm foam) whose top is at row ``top_mm``."""
        rows = (np.arange(self.size) - (self.size / 2.0 - 0.5)) * self.pixel_mm
        cols = rows
        top = top_mm - cols ** 2 / 1600.0  # board curved up at the sides (radius 800 mm)
        depth = rows[:, None] - top[None, :]
        inside = (np.abs(cols) < 220.0)[None, :] & (depth >= 0.0)
        image[inside & (depth < 40.0)] = TABLE_FOAM_HU
        image[inside & ((depth < 2.0) | ((depth >= 38.0) & (depth < 40.0)))] = TABLE_SHELL_HU


def _check(name: str, num_slices: int, size: int) -> None:
    if int(num_slices) != num_slices or num_slices < MIN_SLICES:
        raise ConfigError(f"{name}: num_slices={num_slices!r}; expected an integer >= {MIN_SLICES}")
    if int(size) != size or size < MIN_SIZE:
        raise ConfigError(f"{name}: size={size!r}; expected an integer >= {MIN_SIZE} pixels")


def _finish(name: str, hu: np.ndarray, dz: float, pixel: float, seed: int,
            rng: np.random.Generator) -> CTVolume:
    out = np.rint(np.clip(hu, -1024, 3071)).astype(np.int16)
    add_noise(out, rng, NOISE_HU)
    n, size = out.shape[0], out.shape[1]
    return CTVolume(hu=out, spacing_mm=(float(dz), float(pixel), float(pixel)),
                    positions_mm=np.arange(n, dtype=np.float64) * dz,
                    series_key=make_series_key(name, str(seed), str(n), str(size)), source_format="array")


def _setup(name: str, num_slices: int, size: int, seed: int, fov_mm: float,
           extent_mm: float) -> tuple[_Canvas, np.ndarray, np.random.Generator, np.random.Generator]:
    _check(name, num_slices, size)
    anatomy_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    canvas = _Canvas(int(size), fov_mm / int(size))
    u = np.linspace(0.0, 1.0, int(num_slices))
    return canvas, u, anatomy_rng, noise_rng


# ----------------------------------------------------------------------------- abdomen
def _gas_pockets(rng: np.random.Generator, ax: float, ay: float, cy: float,
                 extent: float) -> list[tuple[float, float, float, float, float, bool]]:
    """Separate ellipsoids (z, y, x, r_z, r_xy mm, stool?) inside the abdominal cavity."""
    pockets: list[tuple[float, float, float, float, float, bool]] = []
    count = int(rng.integers(5, 9))
    for _ in range(400):
        if len(pockets) == count:
            break
        rz, rxy = rng.uniform(15.0, 28.0), rng.uniform(15.0, 28.0)
        z = rng.uniform(0.08 * extent + rz, 0.62 * extent - rz)
        y, x = cy + rng.uniform(-0.75, 0.2) * ay, rng.uniform(-0.75, 0.75) * ax
        if ((abs(x) + rxy) / ax) ** 2 + ((abs(y - cy) + rxy) / ay) ** 2 > 0.8:
            continue
        if all(np.hypot(np.hypot(z - p[0], y - p[1]), x - p[2]) > max(rz, rxy) + max(p[3], p[4]) + 8.0
               for p in pockets):
            pockets.append((z, y, x, rz, rxy, len(pockets) % 2 == 1))
    return pockets


def _fill_pockets(hu: np.ndarray, canvas: _Canvas, dz: float, rng: np.random.Generator,
                  pockets: list[tuple[float, float, float, float, float, bool]]) -> None:
    n, px = hu.shape[0], canvas.pixel_mm
    for z, y, x, rz, rxy, stool in pockets:
        cy, cx = canvas.to_px(y, x)
        cz = z / dz
        s0, s1 = max(0, int(cz - rz / dz - 1)), min(n, int(cz + rz / dz + 2))
        r0, r1 = max(0, int(cy - rxy / px - 1)), min(canvas.size, int(cy + rxy / px + 2))
        c0, c1 = max(0, int(cx - rxy / px - 1)), min(canvas.size, int(cx + rxy / px + 2))
        zz, yy, xx = np.meshgrid(np.arange(s0, s1), np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        inside = ((zz - cz) * dz / rz) ** 2 + ((yy - cy) * px / rxy) ** 2 + ((xx - cx) * px / rxy) ** 2 < 1.0
        box = hu[s0:s1, r0:r1, c0:c1]
        if stool:
            field = ndimage.gaussian_filter(rng.standard_normal(inside.shape),
                                            sigma=(max(2.0 / dz, 0.5), max(2.0 / px, 0.5), max(2.0 / px, 0.5)))
            bubbles = field > np.quantile(field, 0.55)
            box[inside] = 20.0
            box[inside & bubbles] = AIR
        else:
            box[inside] = AIR
            box[inside & ((yy - cy) * px > 0.55 * rxy)] = FLUID  # air-fluid level (fluid posterior)


def make_abdomen(num_slices: int = 48, size: int = 128, seed: int = 0) -> CTVolume:
    """An abdominal CT (no lungs) with bowel gas: 400 mm field of view, 240 mm scan.

    Args:
        num_slices: N slices (>= 2), ``240 / N`` mm apart. size: H = W pixels (>= 16).
        seed: patient seed; the same seed gives identical arrays.
    """
    extent = 240.0
    canvas, u, rng, noise_rng = _setup("make_abdomen", num_slices, size, seed, 400.0, extent)
    ax, ay, cy = 165.0 * rng.uniform(0.92, 1.06), 120.0 * rng.uniform(0.92, 1.06), 10.0
    fat = rng.uniform(10.0, 25.0)
    max_, may = ax - fat, ay - fat
    cax, cay = max_ - 12.0, may - 12.0  # abdominal cavity inside the muscle wall
    spine_y = cy + cay - 30.0
    loops = [(rng.uniform(-0.6, 0.6) * cax, cy + rng.uniform(-0.7, 0.2) * cay, rng.uniform(10.0, 18.0),
              rng.uniform(0, 2 * np.pi), rng.uniform(20.0, 45.0)) for _ in range(40)]
    pockets = _gas_pockets(rng, cax, cay, cy, extent)
    hu = np.empty((len(u), canvas.size, canvas.size), dtype=np.float32)
    for i, t in enumerate(u):
        image = np.full((canvas.size, canvas.size), AIR, dtype=np.float32)
        canvas.ellipse(image, cy, 0.0, ay, ax, FAT)
        wall = canvas.mask(cy, 0.0, may, max_)
        image[wall] = MUSCLE
        cavity = canvas.mask(cy, 0.0, cay, cax)
        image[cavity] = FAT
        for x, y, r, phase, wander in loops:  # fluid-filled small bowel
            canvas.ellipse(image, y + 0.3 * wander * np.cos(phase + 6 * t), x + wander * np.sin(phase + 5 * t),
                           r, r, 25.0, cavity)
        liver = np.clip((t - 0.45) / 0.3, 0.0, 1.0)
        if liver > 0:
            canvas.ellipse(image, cy - 5.0, -0.45 * cax, 0.75 * cay * liver, 0.5 * cax * liver, 58.0, cavity)
        spleen = np.clip((t - 0.6) / 0.2, 0.0, 1.0)
        if spleen > 0:
            canvas.ellipse(image, cy + 0.35 * cay, 0.6 * cax, 0.35 * cay * spleen, 0.22 * cax * spleen, 47.0, cavity)
        kidney = np.sqrt(max(0.0, 1.0 - ((t - 0.55) / 0.25) ** 2))
        for side in (-1.0, 1.0):
            if kidney > 0:
                canvas.ellipse(image, spine_y - 5.0, side * 60.0, 32.0 * kidney, 26.0 * kidney, 32.0, cavity)
            canvas.ellipse(image, spine_y + 10.0, side * 38.0, 18.0 + 10.0 * (1 - t), 14.0 + 8.0 * (1 - t), MUSCLE)
            canvas.ellipse(image, spine_y + 45.0, side * 30.0, 22.0, 22.0, MUSCLE, wall)  # paraspinal muscles
        canvas.ellipse(image, spine_y - 32.0, 18.0, 11.0, 11.0, 40.0)  # aorta
        canvas.ellipse(image, spine_y - 28.0, -22.0, 10.0, 13.0, 35.0)  # inferior vena cava
        canvas.ellipse(image, spine_y, 0.0, 18.0, 22.0, 950.0)  # vertebral body
        canvas.ellipse(image, spine_y, 0.0, 15.0, 19.0, 320.0)
        canvas.ellipse(image, spine_y + 26.0, 0.0, 8.0, 9.0, 20.0)  # spinal canal
        canvas.ellipse(image, spine_y + 42.0, 0.0, 12.0, 4.0, 900.0, wall)  # spinous process
        hu[i] = image
    _fill_pockets(hu, canvas, extent / len(u), rng, pockets)
    for image in hu:  # table under the body, 10 mm below the skin
        canvas.table(image, cy + ay + 10.0)
    return _finish("abdomen", hu, extent / len(u), canvas.pixel_mm, seed, noise_rng)


# ----------------------------------------------------------------------------- head
def make_head(num_slices: int = 40, size: int = 128, seed: int = 0) -> CTVolume:
    """A head CT (no lungs): a ~180 mm wide head in a 500 mm field of view, 190 mm scan.

    Slices run from the maxilla (index 0) to above the vertex. Args as :func:`make_abdomen`.
    """
    extent = 190.0
    canvas, u, rng, noise_rng = _setup("make_head", num_slices, size, seed, 500.0, extent)
    ax = 90.0 * rng.uniform(0.97, 1.03)
    ay = ax * rng.uniform(1.08, 1.16)
    cy, vertex = -10.0, rng.uniform(0.93, 0.96)
    hu = np.empty((len(u), canvas.size, canvas.size), dtype=np.float32)
    for i, t in enumerate(u):
        image = np.full((canvas.size, canvas.size), AIR, dtype=np.float32)
        s = 0.93 + 0.07 * t / 0.45 if t < 0.45 else np.sqrt(max(0.0, 1 - ((t - 0.45) / (vertex - 0.45)) ** 2))
        if s > 0.05:
            sx, sy = ax * s, ay * s
            canvas.ellipse(image, cy, 0.0, sy, sx, -40.0)  # scalp
            if t >= 0.3:  # cranial vault: outer table, diploe, inner table, brain
                for depth, value in ((4.0, 1300.0), (6.5, 600.0), (9.0, 1300.0), (11.0, 40.0)):
                    canvas.ellipse(image, cy, 0.0, sy - depth, sx - depth, value)
                canvas.ellipse(image, cy, 0.0, 0.7 * (sy - 11.0), 0.7 * (sx - 11.0), 30.0)  # white matter
                if 0.5 < t < 0.78:
                    for side in (-1.0, 1.0):
                        canvas.ellipse(image, cy - 5.0, side * 9.0, 28.0, 5.0, 8.0)  # lateral ventricles
                if 0.45 < t < 0.6:
                    canvas.ellipse(image, cy - sy + 16.0, 0.0, 6.0, 12.0, AIR)  # frontal sinus
            else:  # face and skull base
                canvas.ellipse(image, cy, 0.0, sy - 4.0, sx - 4.0, MUSCLE)
                canvas.ellipse(image, cy + 0.35 * sy, 0.0, 0.5 * sy, 0.55 * sx, 40.0)  # cerebellum
                fossa = canvas.mask(cy + 0.35 * sy, 0.0, 0.5 * sy, 0.55 * sx)
                rows = (np.arange(canvas.size) - (canvas.size / 2.0 - 0.5)) * canvas.pixel_mm
                behind = np.broadcast_to((rows > cy + 0.3 * sy)[:, None], fossa.shape)
                canvas.ellipse(image, cy + 0.35 * sy, 0.0, 0.5 * sy + 5.0, 0.55 * sx + 5.0, 1300.0,
                               where=~fossa & behind)  # occipital bone
                if t < 0.2:
                    for side in (-1.0, 1.0):
                        canvas.ellipse(image, cy - 0.45 * sy, side * 28.0, 18.0, 15.0, 1200.0)
                        canvas.ellipse(image, cy - 0.45 * sy, side * 28.0, 16.0, 13.0, AIR)  # maxillary sinus
                    canvas.ellipse(image, cy - 0.6 * sy, 0.0, 22.0, 9.0, AIR)  # nasal cavity
                    canvas.ellipse(image, cy - 0.6 * sy, 0.0, 22.0, 1.0, 1000.0)  # septum
                elif t < 0.3:
                    for side in (-1.0, 1.0):
                        canvas.ellipse(image, cy - 0.62 * sy, side * 32.0, 13.0, 13.0, 10.0)  # globe
                    for k in range(6):  # ethmoid air cells
                        canvas.ellipse(image, cy - 0.62 * sy + 5.0 * (k // 2), (k % 2 - 0.5) * 9.0,
                                       2.3, 3.5, AIR)
                for side in (-1.0, 1.0):
                    canvas.ellipse(image, cy + 0.2 * sy, side * 0.55 * sx, 8.0, 22.0, 1500.0)  # petrous bone
                    for k in range(5):  # mastoid air cells
                        canvas.ellipse(image, cy + 0.33 * sy + 4.0 * (k // 2), side * (0.78 * sx - 4.0 * (k % 2)),
                                       1.6, 1.6, AIR)
        hu[i] = image
        canvas.table(hu[i], cy + ay + 10.0)
    return _finish("head", hu, extent / len(u), canvas.pixel_mm, seed, noise_rng)


# ----------------------------------------------------------------------------- thighs
def make_thighs(num_slices: int = 40, size: int = 128, seed: int = 0) -> CTVolume:
    """A CT of both thighs (no lungs): 450 mm field of view, 300 mm scan.

    Each thigh is about 150 mm across at the top (index N-1), 120 mm at the bottom, with
    8-22 mm of subcutaneous fat. Args as :func:`make_abdomen`.
    """
    extent = 300.0
    canvas, u, rng, noise_rng = _setup("make_thighs", num_slices, size, seed, 450.0, extent)
    radius = 75.0 * rng.uniform(0.93, 1.07)
    gap, fat = rng.uniform(6.0, 20.0), rng.uniform(8.0, 22.0)
    septa = rng.uniform(0, 2 * np.pi, size=(2, 3))
    hu = np.empty((len(u), canvas.size, canvas.size), dtype=np.float32)
    for i, t in enumerate(u):
        image = np.full((canvas.size, canvas.size), AIR, dtype=np.float32)
        r = radius * (0.8 + 0.2 * t)
        for k, side in enumerate((-1.0, 1.0)):
            cx = side * (radius + gap / 2.0)
            canvas.ellipse(image, 0.0, cx, r, 0.95 * r, FAT)
            muscle = canvas.mask(0.0, cx, r - fat, 0.95 * r - fat)
            image[muscle] = MUSCLE
            for angle in septa[k]:  # intermuscular fat septa (spokes of small fat ellipses)
                for f in np.linspace(0.35, 0.9, 6):
                    canvas.ellipse(image, f * (r - fat) * np.sin(angle), cx + f * (r - fat) * np.cos(angle),
                                   2.0, 2.0, FAT, muscle)
            vy, vx = -0.45 * (r - fat), cx - side * 0.35 * (r - fat)
            canvas.ellipse(image, vy, vx, 9.0, 9.0, FAT)
            canvas.ellipse(image, vy, vx - 3.0, 4.0, 4.0, 40.0)  # femoral artery and vein
            canvas.ellipse(image, vy, vx + 4.0, 5.0, 5.0, 40.0)
            fy, fx = 5.0, cx - side * 5.0
            canvas.ellipse(image, fy, fx, 14.0, 14.0, 1400.0)  # femur cortex
            canvas.ellipse(image, fy, fx, 8.0, 8.0, -50.0)  # fatty marrow
        hu[i] = image
        canvas.table(hu[i], radius + 10.0)
    return _finish("thighs", hu, extent / len(u), canvas.pixel_mm, seed, noise_rng)
