"""Gray -> HU map estimation of 8-bit windowed CT images (covidct.preprocessing.gray_to_hu)."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import GrayMapError
from covidct.preprocessing.gray_to_hu import GrayMapConfig, GrayToHU, estimate_gray_to_hu, gray_image_to_hu


def window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> uint8 with window width/level (HU), as a viewer screenshot would."""
    return np.clip(np.round((hu - (level - width / 2)) / width * 255), 0, 255).astype(np.uint8)


def synthetic_slice(size: int = 256, seed: int = 0) -> np.ndarray:
    """HU slice [H, W]: outside air, body (fat ring, muscle), two lungs with vessels, a bone."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    hu = np.full((size, size), -1000.0)
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1
    inner = ((xx - 0.5) / 0.37) ** 2 + ((yy - 0.5) / 0.27) ** 2 <= 1
    hu[body] = -100.0
    hu[inner] = 40.0
    for cx in (0.33, 0.67):
        lung = ((xx - cx) / 0.12) ** 2 + ((yy - 0.5) / 0.2) ** 2 <= 1
        hu[lung] = -850.0 + rng.normal(0, 25, size=(size, size))[lung]
        vessels = lung & (rng.random((size, size)) < 0.03)
        hu[vessels] = 30.0
    hu[((xx - 0.5) / 0.04) ** 2 + ((yy - 0.75) / 0.03) ** 2 <= 1] = 700.0
    return hu + rng.normal(0, 12, size=hu.shape)


@pytest.mark.parametrize("width,level", [(1500, -600), (3100, -590), (2000, -500), (1200, -550), (400, 40)])
def test_recovers_window(width: float, level: float) -> None:
    hu = synthetic_slice()
    gray = window(hu, width, level)
    mapping = estimate_gray_to_hu(gray)
    lo, hi = mapping.window_hu
    assert hi - lo == pytest.approx(width, rel=0.08)
    assert (lo + hi) / 2 == pytest.approx(level, abs=0.06 * width)
    back, again = gray_image_to_hu(gray)
    assert back.dtype == np.int16 and back.shape == gray.shape and again == mapping
    valid = (gray > 0) & (gray < 255) & (np.abs(hu - 40) < 40)
    assert np.median(np.abs(back[valid] - hu[valid])) <= 30


def test_map_object() -> None:
    mapping = GrayToHU(slope_hu=6.0, intercept_hu=-1350.0, method="air+soft_tissue",
                       landmarks=(("air", 58.0, -1000.0), ("soft_tissue", 225.0, 0.0)))
    assert mapping.window_hu == (-1350.0, 180.0)
    out = mapping.apply(np.array([[0, 100, 255]], dtype=np.uint8))
    assert out.dtype == np.int16 and out.tolist() == [[-1024, -750, 180]]
    assert mapping.to_dict()["width_hu"] == 1530.0
    with pytest.raises(AttributeError):
        mapping.slope_hu = 1.0  # type: ignore[misc]


def test_uses_lung_when_no_outside_air() -> None:
    hu = synthetic_slice()[40:216, 60:196]  # cropped inside the body: lungs and tissue only
    mapping = estimate_gray_to_hu(window(hu, 1500, -600))
    assert mapping.method.startswith("lung")
    assert mapping.window_hu[1] - mapping.window_hu[0] == pytest.approx(1500, rel=0.15)


def test_refuses_flat_image() -> None:
    with pytest.raises(GrayMapError, match=r"flat\.png: 1 histogram peak"):
        estimate_gray_to_hu(np.full((64, 64), 120, dtype=np.uint8), source="flat.png")


@pytest.mark.parametrize("array", [np.zeros((8, 8), dtype=np.float32), np.zeros((3, 8, 8), dtype=np.uint8)])
def test_refuses_wrong_array(array: np.ndarray) -> None:
    with pytest.raises(GrayMapError, match=r"x\.npy: array of shape .* expected a 2-D uint8"):
        estimate_gray_to_hu(array, source="x.npy")


def test_refuses_saturated_image() -> None:
    gray = window(synthetic_slice(), 100, 40)  # almost everything at 0 or 255
    with pytest.raises(GrayMapError, match=r"gray 6\.\.254"):
        estimate_gray_to_hu(gray, source="narrow.png")


def test_refuses_when_tissue_saturated() -> None:
    gray = window(synthetic_slice(), 600, -750)  # -1050..-450: air and lung only, tissue at 255
    with pytest.raises(GrayMapError, match=r"narrow\.png: .*saturated at 255"):
        estimate_gray_to_hu(gray, source="narrow.png", config=GrayMapConfig(min_unsaturated_fraction=0.05))


@pytest.mark.real_data
def test_real_series_windows(real_data_dir) -> None:
    from covidct.preprocessing.io.series_reader import read_series

    for name in ("P002", "cap002", "normal002"):
        volume = read_series(real_data_dir / name).hu
        n = volume.shape[0]
        for fraction in (0.3, 0.5, 0.7):
            hu = volume[int(round(fraction * (n - 1)))].astype(np.float64)
            lung = (hu >= -950) & (hu <= -500)
            soft = (hu >= -150) & (hu <= 100)
            for width, level in ((1500, -600), (3100, -590), (400, 40)):
                gray = window(hu, width, level)
                mapping = estimate_gray_to_hu(gray, source=f"{name}@{fraction}")
                valid = (lung | soft) & (gray > 0) & (gray < 255)
                error = np.median(np.abs(mapping.apply(gray)[valid] - hu[valid]))
                assert error <= 30, (name, fraction, width, level, mapping.method, error)
