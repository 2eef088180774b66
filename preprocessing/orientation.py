"""The in-plane reorientation between a DICOM series' stored pixels and the patient frame.

Every :class:`~covidct.preprocessing.volume.CTVolume` is laid out in one patient convention (DICOM's
LPS frame): slices from inferior to superior, rows from anterior to posterior, columns
from the patient's right to left - what a supine, head-first series with Image
Orientation (Patient) (0020,0037) ``[1,0,0,0,1,0]`` stores. Prone, feet-first and
decubitus series store their pixels otherwise; :func:`transform_from_orientation` finds
the flips and the transpose that bring them to that convention and
:class:`InPlaneTransform` applies them (and undoes them, so the masks and the DICOM SEG
go back to each source frame's own geometry).

Image Orientation (Patient) holds the row direction cosines (the direction of increasing
column index) and the column direction cosines (increasing row index), in patient
coordinates (x to the patient's left, y posterior, z superior).

Units: degrees for obliquity, mm elsewhere; arrays ``[N, H, W, ...]`` (axes 1 and 2 are
rows and columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from covidct.errors import ConfigError

#: Image Orientation (Patient) that scanners write for each Patient Position (0018,5100).
PATIENT_POSITION_ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "HFP": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "FFP": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "HFDL": (0.0, -1.0, 0.0, 1.0, 0.0, 0.0),
    "HFDR": (0.0, 1.0, 0.0, -1.0, 0.0, 0.0),
    "FFDL": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0),
    "FFDR": (0.0, -1.0, 0.0, -1.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class InPlaneTransform:
    """How stored slice pixels ``[H_s, W_s]`` become patient-frame pixels ``[H, W]``.

    Applied in this order: ``transpose`` (source columns become rows), then
    ``flip_rows`` (reverse the row axis), then ``flip_columns``. The identity is a
    supine head-first series.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_columns: bool = False

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_columns)

    def describe(self) -> str:
        """``"identity"`` or the operations, e.g. ``"transpose, flip rows"``."""
        parts = [name for name, on in (("transpose", self.transpose), ("flip rows", self.flip_rows),
                                       ("flip columns", self.flip_columns)) if on]
        return ", ".join(parts) or "identity"

    def patient_shape(self, source_hw: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` in the patient frame of a stored slice of ``source_hw`` rows x columns."""
        return (source_hw[1], source_hw[0]) if self.transpose else (source_hw[0], source_hw[1])

    def patient_spacing(self, source_spacing: tuple[float, float]) -> tuple[float, float]:
        """``(y, x)`` mm in the patient frame of Pixel Spacing (0028,0030) ``(row, column)`` mm."""
        return (source_spacing[1], source_spacing[0]) if self.transpose else (source_spacing[0], source_spacing[1])

    def to_patient(self, array: np.ndarray) -> np.ndarray:
        """``[N, H_s, W_s, ...]`` stored layout -> ``[N, H, W, ...]`` patient layout (a view)."""
        out = np.swapaxes(array, 1, 2) if self.transpose else array
        if self.flip_rows:
            out = out[:, ::-1]
        if self.flip_columns:
            out = out[:, :, ::-1]
        return out

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """``[N, H, W, ...]`` patient layout -> ``[N, H_s, W_s, ...]`` stored layout (a view)."""
        out = array
        if self.flip_columns:
            out = out[:, :, ::-1]
        if self.flip_rows:
            out = out[:, ::-1]
        return np.swapaxes(out, 1, 2) if self.transpose else out


IDENTITY = InPlaneTransform()


def obliquity_degrees(orientation: tuple[float, ...]) -> float:
    """The largest angle (degrees) between a direction cosine of (0020,0037) and the
    patient axis it runs closest to (0 for an axis-aligned series)."""
    worst = 0.0
    for vector in (np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)):
        norm = float(np.linalg.norm(vector))
        if norm == 0:
            return 90.0
        cosine = min(1.0, float(np.abs(vector).max()) / norm)
        worst = max(worst, math.degrees(math.acos(cosine)))
    return worst


def transform_from_orientation(orientation: tuple[float, ...]) -> InPlaneTransform | None:
    """The :class:`InPlaneTransform` of an axial Image Orientation (Patient) (six direction
    cosines), taking each cosine to its nearest patient axis; ``None`` when the two
    cosines do not run along x and y (a sagittal, coronal or degenerate orientation)."""
    row_dir = np.asarray(orientation[:3], dtype=float)  # increasing column index
    col_dir = np.asarray(orientation[3:], dtype=float)  # increasing row index
    axis_r, axis_c = int(np.argmax(np.abs(row_dir))), int(np.argmax(np.abs(col_dir)))
    if {axis_r, axis_c} != {0, 1}:
        return None
    if axis_r == 0:  # columns run left-right: no transpose
        return InPlaneTransform(False, bool(col_dir[1] < 0), bool(row_dir[0] < 0))
    # columns run anterior-posterior: they become the rows
    return InPlaneTransform(True, bool(row_dir[1] < 0), bool(col_dir[0] < 0))


def superior_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """The unit slice normal of (0020,0037), pointing superior (z >= 0): positions
    projected onto it ascend from inferior to superior whatever the patient position."""
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    norm = float(np.linalg.norm(normal))
    if norm == 0:
        return np.array([0.0, 0.0, 1.0])
    normal = normal / norm
    return -normal if normal[2] < 0 else normal


def source_orientation(position: str) -> tuple[float, ...]:
    """Image Orientation (Patient) of a Patient Position (0018,5100) code, e.g. ``"HFP"``."""
    try:
        return PATIENT_POSITION_ORIENTATIONS[position]
    except KeyError:
        raise ConfigError(
            f"patient position {position!r}; expected one of {sorted(PATIENT_POSITION_ORIENTATIONS)}"
        ) from None
