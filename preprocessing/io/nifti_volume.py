"""Read a NIfTI volume (``.nii``, ``.nii.gz``) into an axial HU :class:`CTVolume`.

HU = raw * scl_slope + scl_inter (nibabel applies the header scaling), rounded and
clipped to int16. The voxel axes are reoriented to DICOM's patient frame (LPS) and
returned as ``[N, H, W]``: slices from inferior to superior, rows from anterior to
posterior, columns from the patient's right to left - the layout of an axial DICOM
series with Image Orientation (Patient) ``[1,0,0,0,1,0]``. Spacing (z, y, x) in mm comes
from the affine (voxel sizes along the reoriented axes); ``positions_mm`` are the slice
centres projected onto the slice normal.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from covidct.errors import PixelDecodeError, UnsupportedFormatError, VolumeError
from preprocessing.config import ReaderConfig
from preprocessing.io.reader_checks import check_slice_count, clip_to_int16
from preprocessing.volume import CTVolume, make_series_key

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Array axes (i, j, k) point to patient Left, Posterior, Superior after reorientation.
LPS = ("L", "P", "S")


def read_nifti(path: str | Path, *, config: ReaderConfig = ReaderConfig()) -> CTVolume:
    """One NIfTI-1/2 volume as HU int16 ``[N, H, W]`` (axial, inferior to superior)."""
    path = Path(path)
    try:
        image = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise UnsupportedFormatError(
            f"{path}: not a readable NIfTI image ({type(exc).__name__}: {exc})"
        ) from exc
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]) or min(shape[:3]) < 1:
        raise VolumeError(f"{path}: NIfTI shape {shape}; expected a 3-D volume (x, y, z)")
    affine = np.asarray(image.affine, dtype=np.float64)
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(LPS))
    num_slices = shape[int(np.flatnonzero(transform[:, 0] == 2)[0])]
    check_slice_count(str(path), num_slices, config)
    try:
        raw = np.asanyarray(image.dataobj)  # applies scl_slope / scl_inter
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data block
        raise PixelDecodeError(
            f"{path}: cannot read the NIfTI voxel data ({type(exc).__name__}: {exc})"
        ) from exc
    data = apply_orientation(raw.reshape(shape[:3]), transform)  # (L, P, S) axes
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise VolumeError(f"{path}: NIfTI voxels hold NaN or infinite values; expected HU")
        data = np.rint(data)
    elif not np.issubdtype(data.dtype, np.integer):
        raise VolumeError(f"{path}: NIfTI data type {data.dtype}; expected integer or float HU")
    hu = np.ascontiguousarray(clip_to_int16(data).transpose(2, 1, 0))
    new_affine = affine @ inv_ornt_aff(transform, shape[:3])
    zooms = np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0))  # along i (x), j (y), k (z)
    normal = new_affine[:3, 2] / zooms[2]
    first = float(new_affine[:3, 3] @ normal)
    return CTVolume(
        hu=hu,
        spacing_mm=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        positions_mm=first + np.arange(hu.shape[0], dtype=np.float64) * float(zooms[2]),
        series_key=make_series_key("nifti", path.name),
        source_format="nifti",
    )
