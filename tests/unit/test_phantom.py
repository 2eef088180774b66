"""The synthetic chest CT phantom: determinism, shapes, anatomy along z, lesions."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import SelectionConfig
from covidct.preprocessing.synthetic.phantom import (
    FIELD_OF_VIEW_MM,
    SCAN_EXTENT_MM,
    Phantom,
    PhantomConfig,
    default_spacing_mm,
    make_phantom,
)

NOISE_TOLERANCE_HU = 3 * PhantomConfig().noise_hu


@pytest.fixture(scope="module")
def covid() -> Phantom:
    return make_phantom(num_slices=90, size=128, covid=True, seed=0)


@pytest.fixture(scope="module")
def normal() -> Phantom:
    return make_phantom(num_slices=90, size=128, covid=False, seed=0)


def _open_lung_selection(hu: np.ndarray) -> np.ndarray:
    """Paper 002's rule, written out here independently of covidct.preprocessing.slice_selection."""
    cfg = SelectionConfig()
    scale = hu.shape[1] / cfg.reference_size
    rows = slice(int(cfg.region_y[0] * scale), int(cfg.region_y[1] * scale))
    cols = slice(int(cfg.region_x[0] * scale), int(cfg.region_x[1] * scale))
    dark = (hu[:, rows, cols] < cfg.dark_threshold_hu).sum(axis=(1, 2))
    return dark > (dark.max() - dark.min()) / cfg.divisor


def test_same_seed_same_arrays_and_different_seed_differs() -> None:
    a = make_phantom(num_slices=35, size=64, seed=3)
    b = make_phantom(num_slices=35, size=64, seed=3)
    c = make_phantom(num_slices=35, size=64, seed=4)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.lung_mask, b.lung_mask)
    assert np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.volume.series_key == b.volume.series_key
    assert not np.array_equal(a.volume.hu, c.volume.hu)
    assert not np.array_equal(a.lung_mask, c.lung_mask)


@pytest.mark.parametrize("num_slices,size", [(35, 128), (150, 128), (406, 128), (6, 512), (1100, 32)])
def test_shapes_dtypes_and_metadata(num_slices: int, size: int) -> None:
    p = make_phantom(num_slices=num_slices, size=size, seed=1, spacing_mm=(1.5, 0.8, 0.8))
    shape = (num_slices, size, size)
    assert p.volume.hu.dtype == np.int16 and p.volume.hu.shape == shape
    assert p.lung_mask.dtype == np.bool_ and p.lung_mask.shape == shape
    assert p.lesion_mask.dtype == np.bool_ and p.lesion_mask.shape == shape
    assert p.slice_labels.dtype == np.uint8 and p.slice_labels.shape == (num_slices,)
    assert p.volume.source_format == "array"
    assert p.volume.spacing_mm == (1.5, 0.8, 0.8)
    np.testing.assert_allclose(p.volume.positions_mm, np.arange(num_slices) * 1.5)
    assert np.array_equal(p.slice_labels, p.lesion_mask.any(axis=(1, 2)).astype(np.uint8))


@pytest.mark.parametrize("num_slices,size", [(35, 64), (406, 64), (35, 512), (120, 256)])
def test_default_geometry_is_an_adult_chest(num_slices: int, size: int) -> None:
    p = make_phantom(num_slices=num_slices, size=size, covid=False, seed=0)
    dz, dy, dx = p.volume.spacing_mm
    assert (dz, dy, dx) == default_spacing_mm(num_slices, size)
    assert dz == pytest.approx(SCAN_EXTENT_MM / num_slices) and dx == dy == pytest.approx(FIELD_OF_VIEW_MM / size)
    np.testing.assert_allclose(p.volume.positions_mm, np.arange(num_slices) * dz)
    lung_ml = p.lung_mask.sum() * p.volume.voxel_volume_ml
    assert 3000 < lung_ml < 7000
    lung_slices = np.flatnonzero(p.lung_mask.any(axis=(1, 2)))
    assert 220 < (lung_slices[-1] - lung_slices[0] + 1) * dz < 290  # apex to base, mm
    assert lung_slices[0] > 0 and lung_slices[-1] < num_slices - 1  # margin below and above
    body_cols = np.flatnonzero((p.volume.hu[num_slices // 2] > -500).any(axis=0))
    assert 280 < body_cols.size * dx < 360  # chest width, mm


def test_airways_are_exposed_and_excluded_from_the_lungs() -> None:
    p = make_phantom(num_slices=60, size=128, covid=True, seed=5)
    airway = p.airway_mask
    assert airway is not None and airway.dtype == np.bool_ and airway.shape == p.lung_mask.shape
    assert airway.any() and not (airway & p.lung_mask).any() and not (airway & p.lesion_mask).any()
    assert float(np.median(p.volume.hu[airway])) < -950
    top = p.volume.num_slices - 1  # above the apices: trachea, no lung
    assert airway[top].any() and not p.lung_mask[top].any()
    trachea_mm = 2 * np.sqrt(airway[top].sum() / np.pi) * p.volume.spacing_mm[1]
    assert 15 < trachea_mm < 25


def test_explicit_spacing_is_metadata_only() -> None:
    a = make_phantom(num_slices=30, size=64, seed=2)
    b = make_phantom(num_slices=30, size=64, seed=2, spacing_mm=(2.0, 0.7, 0.7))
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert b.volume.spacing_mm == (2.0, 0.7, 0.7) and a.volume.spacing_mm != b.volume.spacing_mm


def test_tissues_have_their_hu(normal: Phantom) -> None:
    hu = normal.volume.hu
    assert abs(float(np.median(hu[:, :3, :3])) - (-1000)) < NOISE_TOLERANCE_HU  # air corner
    lung_hu = float(np.median(hu[normal.lung_mask]))
    assert -900 < lung_hu < -800
    assert hu.max() >= 400  # bone
    body = hu[hu.shape[0] // 2, hu.shape[1] // 2 - 5: hu.shape[1] // 2 + 5, 60:68]
    assert -150 < float(np.median(body)) < 80  # soft tissue between the lungs
    assert hu.min() >= -1024


def test_lungs_closed_at_both_ends_and_open_in_the_middle(normal: Phantom) -> None:
    area = normal.lung_mask.sum(axis=(1, 2)).astype(float)
    n = area.size
    assert area[: max(1, n // 20)].max() <= 0.02 * area.max()
    assert area[-max(1, n // 20):].max() <= 0.02 * area.max()
    middle = area[int(0.35 * n): int(0.65 * n)]
    assert middle.min() >= 0.5 * area.max()


@pytest.mark.parametrize("num_slices,size", [(35, 128), (120, 256), (406, 128)])
def test_open_lung_selection_discards_both_ends(num_slices: int, size: int) -> None:
    p = make_phantom(num_slices=num_slices, size=size, covid=False, seed=2)
    chosen = np.flatnonzero(_open_lung_selection(p.volume.hu))
    assert chosen.size >= 0.3 * num_slices
    assert chosen.min() >= 0.12 * num_slices
    assert chosen.max() <= 0.9 * num_slices
    lung_area = p.lung_mask.sum(axis=(1, 2))
    # Like on real series (normal002: ~35 %), apical slices whose small lungs fill the
    # region are kept; closed slices (lung area ~0) never are.
    assert lung_area[chosen].min() > 0.2 * lung_area.max()
    assert lung_area[chosen].mean() > 0.6 * lung_area.max()


def test_negative_has_no_lesions(normal: Phantom) -> None:
    assert not normal.lesion_mask.any()
    assert not normal.slice_labels.any()


def test_covid_lesions_inside_lungs_bilateral_and_spread(covid: Phantom) -> None:
    lesion = covid.lesion_mask
    assert lesion.any()
    assert not (lesion & ~covid.lung_mask).any()
    half = lesion.shape[2] // 2
    assert lesion[:, :, :half].any() and lesion[:, :, half:].any()
    open_slices = _open_lung_selection(covid.volume.hu)
    assert covid.slice_labels[open_slices].mean() >= 0.3
    assert np.array_equal(covid.slice_labels, lesion.any(axis=(1, 2)).astype(np.uint8))


def test_lesion_hu_ranges_ground_glass_and_consolidation() -> None:
    values = []
    for seed in range(4):
        p = make_phantom(num_slices=60, size=128, covid=True, seed=seed)
        values.append(p.volume.hu[p.lesion_mask])
    hu = np.concatenate(values).astype(float)
    low, high = np.percentile(hu, [0.5, 99.5])
    assert low >= -700 - NOISE_TOLERANCE_HU
    assert high <= 50 + NOISE_TOLERANCE_HU
    ground_glass = (hu >= -700) & (hu <= -300)
    consolidation = (hu >= -100) & (hu <= 50)
    assert ground_glass.mean() > 0.3
    assert consolidation.mean() > 0.02


def test_covid_and_negative_are_the_same_patient_outside_lesions(covid: Phantom, normal: Phantom) -> None:
    outside = ~covid.lesion_mask
    assert np.array_equal(covid.volume.hu[outside], normal.volume.hu[outside])
    assert np.array_equal(covid.lung_mask, normal.lung_mask)


def test_patients_vary_with_seed() -> None:
    volumes = [make_phantom(num_slices=40, size=64, covid=True, seed=s) for s in range(5)]
    lung_volumes = {int(p.lung_mask.sum()) for p in volumes}
    lesion_volumes = {int(p.lesion_mask.sum()) for p in volumes}
    assert len(lung_volumes) == 5 and len(lesion_volumes) == 5


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ConfigError, match="num_slices=1"):
        make_phantom(num_slices=1, size=64)
    with pytest.raises(ConfigError, match="size=8"):
        make_phantom(num_slices=10, size=8)
    with pytest.raises(ConfigError, match="spacing_mm"):
        make_phantom(num_slices=10, size=64, spacing_mm=(2.0, -0.7, 0.7))
    from covidct.preprocessing.synthetic.lesion_model import LesionConfig

    bad = PhantomConfig(lesions=LesionConfig(n_lesions=(5, 2)))
    with pytest.raises(ConfigError, match=r"n_lesions=\(5, 2\)"):
        make_phantom(num_slices=10, size=64, config=bad)


def test_phantom_rejects_inconsistent_masks(normal: Phantom) -> None:
    with pytest.raises(VolumeError, match="lung_mask must be bool"):
        Phantom(volume=normal.volume, lung_mask=normal.lung_mask[:-1],
                lesion_mask=normal.lesion_mask, slice_labels=normal.slice_labels)
    with pytest.raises(VolumeError, match="slice_labels must be uint8"):
        Phantom(volume=normal.volume, lung_mask=normal.lung_mask,
                lesion_mask=normal.lesion_mask, slice_labels=normal.slice_labels.astype(bool))
    with pytest.raises(VolumeError, match="airway_mask must be bool"):
        Phantom(volume=normal.volume, lung_mask=normal.lung_mask, lesion_mask=normal.lesion_mask,
                slice_labels=normal.slice_labels, airway_mask=normal.lung_mask.astype(np.uint8))
    with pytest.raises(VolumeError, match=r"airway_mask must be disjoint from lung_mask; \d+ voxels"):
        Phantom(volume=normal.volume, lung_mask=normal.lung_mask, lesion_mask=normal.lesion_mask,
                slice_labels=normal.slice_labels, airway_mask=normal.lung_mask)
