"""Synthetic series a chest CT triage must refuse: non-chest generators, case transforms,
the case list."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidct.errors import ConfigError
from covidct.preprocessing.synthetic.case_transforms import (
    all_air,
    crop_slices,
    flip_anterior_posterior,
    rotate_in_plane,
    shift_hu,
    uniform_noise,
    with_spacing,
)
from covidct.preprocessing.synthetic.non_chest import make_abdomen, make_head, make_thighs
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.synthetic.trust_cases import REASON_CODES, TrustCase, crop_cases, trust_cases
from covidct.preprocessing.volume import CTVolume

GENERATORS = {"abdomen": make_abdomen, "head": make_head, "thighs": make_thighs}
#: (field of view, scan extent) in mm of each generator.
GEOMETRY_MM = {"abdomen": (400.0, 240.0), "head": (500.0, 190.0), "thighs": (450.0, 300.0)}
EXPECTED = {
    "abdomen_bowel_gas": {"no_lungs"},
    "head": {"no_lungs"},
    "thighs": {"no_lungs"},
    "neck_only": {"no_lungs", "too_few_lung_slices", "implausible_lung_volume", "lungs_incomplete"},
    "base_only": {"lungs_incomplete", "implausible_lung_volume", "too_few_lung_slices"},
    "rotated_90": {"orientation"},
    "flipped_front_back": {"orientation"},
    "hu_plus_1024": {"hu_calibration"},
    "hu_minus_1024": {"hu_calibration"},
    "all_air": {"no_body", "no_lungs", "hu_calibration"},
    "noise": {"hu_calibration", "no_body", "no_lungs"},
    "pixel_spacing_9mm": {"implausible_spacing"},
    "slice_spacing_40mm": {"implausible_spacing"},
}


def _body(hu: np.ndarray) -> np.ndarray:
    """bool [N, H, W]: per slice, the regions above -500 HU with their holes filled, without the
    table (a region whose median is the table shell's +200 HU) and specks under 1 % of the largest."""
    out = np.zeros(hu.shape, dtype=bool)
    for i, image in enumerate(hu > -500):
        labels, count = ndimage.label(image)
        if not count:
            continue
        sizes = ndimage.sum(image, labels, range(1, count + 1))
        medians = ndimage.median(hu[i], labels, range(1, count + 1))
        keep = [k + 1 for k in range(count) if sizes[k] >= 0.01 * sizes.max() and medians[k] < 150]
        out[i] = ndimage.binary_fill_holes(np.isin(labels, keep))
    return out


@pytest.fixture(scope="module")
def chest() -> CTVolume:
    return make_phantom(num_slices=20, size=64, covid=False, seed=1).volume


@pytest.fixture(scope="module")
def abdomen() -> CTVolume:
    return make_abdomen(num_slices=40, size=128, seed=3)


# ----------------------------------------------------------------------------- generators
@pytest.mark.parametrize("name", list(GENERATORS))
def test_generators_are_seeded_and_have_plausible_spacing(name: str) -> None:
    make = GENERATORS[name]
    a, b, c = make(24, 64, 7), make(24, 64, 7), make(24, 64, 8)
    assert np.array_equal(a.hu, b.hu) and a.series_key == b.series_key
    assert not np.array_equal(a.hu, c.hu) and a.series_key != c.series_key
    assert a.hu.dtype == np.int16 and a.hu.shape == (24, 64, 64) and a.source_format == "array"
    fov, extent = GEOMETRY_MM[name]
    assert a.spacing_mm == pytest.approx((extent / 24, fov / 64, fov / 64))
    np.testing.assert_allclose(a.positions_mm, np.arange(24) * extent / 24)
    assert abs(float(np.median(a.hu[:, :4, :4])) + 1000) < 45  # air in the corners
    assert a.hu.min() >= -1024


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generators_reject_bad_shapes(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"make_{name}: num_slices=1; expected an integer >= 2"):
        GENERATORS[name](1, 64, 0)
    with pytest.raises(ConfigError, match=rf"make_{name}: size=8; expected an integer >= 16"):
        GENERATORS[name](10, 8, 0)


def test_abdomen_tissues_and_bone_have_their_hu(abdomen: CTVolume) -> None:
    hu, body = abdomen.hu, _body(abdomen.hu)
    inside = hu[body].astype(float)
    assert ((inside > -130) & (inside < -70)).mean() > 0.15  # fat
    assert ((inside > 25) & (inside < 70)).mean() > 0.25  # muscle, organs, bowel
    assert np.percentile(inside, 99.9) >= 300 and inside.max() <= 1500  # bone
    middle, centre = len(hu) // 2, hu.shape[2] // 2
    skin = np.flatnonzero(body[middle, :, centre]).max()  # the body's most posterior row
    table = np.flatnonzero(hu[middle, skin + 1:, centre] > 150)
    assert table.size and table[0] >= 2  # the table under the body, a gap apart


def test_abdomen_has_bowel_gas_inside_the_body_but_no_lung_sized_air(abdomen: CTVolume) -> None:
    body = _body(abdomen.hu)
    air = (abdomen.hu < -500) & body
    labels, count = ndimage.label(air)
    volumes_ml = ndimage.sum(air, labels, range(1, count + 1)) * abdomen.voxel_volume_ml
    assert count >= 5 and volumes_ml.max() >= 20  # several pockets, several cm across
    assert volumes_ml.max() < 500 and air.sum() * abdomen.voxel_volume_ml < 500
    eroded = ndimage.binary_erosion(body, structure=np.ones((1, 5, 5), bool))
    assert not (air & ~eroded).any()  # pockets stay away from the skin
    mottled = ((abdomen.hu > -30) & (abdomen.hu < 70) & ndimage.binary_dilation(air, iterations=1)).sum()
    assert mottled > 0


def test_head_is_small_in_a_large_field_of_view() -> None:
    head = make_head(num_slices=40, size=128, seed=2)
    fov = head.hu.shape[2] * head.spacing_mm[2]
    assert fov == pytest.approx(500.0)
    skull = head.hu > 1000
    widest = int(np.argmax(skull.sum(axis=(1, 2))))
    labels, _ = ndimage.label(head.hu[widest] > -500)
    outline = labels == np.bincount(labels[skull[widest]]).argmax()  # the tissue around the skull
    cols, rows = np.flatnonzero(outline.any(axis=0)), np.flatnonzero(outline.any(axis=1))
    width_mm = (cols[-1] - cols[0] + 1) * head.spacing_mm[2]
    assert 165 < width_mm < 195
    assert 180 < (rows[-1] - rows[0] + 1) * head.spacing_mm[1] < 230  # front to back
    brain = head.hu[widest, (rows[0] + rows[-1]) // 2 - 3: (rows[0] + rows[-1]) // 2 + 3, 60:68]
    assert 20 < float(np.median(brain)) < 50
    body = _body(head.hu)
    sinus_ml = ((head.hu < -500) & body).sum() * head.voxel_volume_ml
    assert 5 < sinus_ml < 200  # sinuses and air cells, nothing like a lung
    assert not body[-1].any()  # the scan ends above the vertex


def test_thighs_are_two_limbs_with_femurs_fat_and_muscle() -> None:
    thighs = make_thighs(num_slices=30, size=128, seed=4)
    middle = thighs.hu[15]
    rows = slice(0, int(0.6 * middle.shape[0]))  # above the table
    _, limbs = ndimage.label(middle[rows] > -500)
    assert limbs == 2
    _, femurs = ndimage.label(middle > 1000)
    assert femurs == 2
    inside = thighs.hu[_body(thighs.hu)].astype(float)
    assert ((inside > -130) & (inside < -70)).mean() > 0.15
    assert ((inside > 25) & (inside < 75)).mean() > 0.3
    assert not ((thighs.hu < -500) & _body(thighs.hu)).any()


# ----------------------------------------------------------------------------- transforms
def test_rotation_four_times_is_identity_and_swaps_spacing(chest: CTVolume) -> None:
    odd = with_spacing(chest, (3.0, 0.5, 0.8))
    once = rotate_in_plane(odd, 1)
    assert np.array_equal(once.hu, np.rot90(odd.hu, 1, axes=(1, 2))) and once.spacing_mm == (3.0, 0.8, 0.5)
    back = odd
    for _ in range(4):
        back = rotate_in_plane(back, 1)
    assert np.array_equal(back.hu, odd.hu) and back.spacing_mm == odd.spacing_mm
    assert np.array_equal(rotate_in_plane(odd, -1).hu, rotate_in_plane(odd, 3).hu)
    with pytest.raises(ConfigError, match=r"quarter_turns=1\.5; expected an integer"):
        rotate_in_plane(chest, 1.5)


def test_flip_mirrors_rows_and_twice_is_identity(chest: CTVolume) -> None:
    flipped = flip_anterior_posterior(chest)
    assert np.array_equal(flipped.hu[:, 0], chest.hu[:, -1])
    assert np.array_equal(flip_anterior_posterior(flipped).hu, chest.hu)
    assert flipped.series_key != chest.series_key


def test_shift_hu_adds_and_clips_to_int16(chest: CTVolume) -> None:
    up = shift_hu(chest, 1024)
    assert np.array_equal(up.hu.astype(int), chest.hu.astype(int) + 1024)
    extreme = CTVolume(hu=np.array([[[32000, -32000, 0]]], dtype=np.int16), spacing_mm=(1.0, 1.0, 1.0),
                       positions_mm=np.zeros(1), series_key="k", source_format="array")
    assert shift_hu(extreme, 1024).hu.ravel().tolist() == [32767, -30976, 1024]
    assert shift_hu(extreme, -1024).hu.ravel().tolist() == [30976, -32768, -1024]
    with pytest.raises(ConfigError, match=r"offset=0\.5; expected an integer"):
        shift_hu(chest, 0.5)


def test_crops_take_the_right_slices_and_keep_positions(chest: CTVolume) -> None:
    named = CTVolume(hu=chest.hu, spacing_mm=chest.spacing_mm, positions_mm=chest.positions_mm + 100.0,
                     series_key="k", source_format="dicom", source_names=tuple(f"{i}.dcm" for i in range(20)))
    neck = crop_slices(named, 0.85, 1.0)  # top 15 % of 20 slices: 17, 18, 19
    assert np.array_equal(neck.hu, chest.hu[17:])
    np.testing.assert_array_equal(neck.positions_mm, named.positions_mm[17:])
    assert neck.source_names == ("17.dcm", "18.dcm", "19.dcm") and neck.spacing_mm == chest.spacing_mm
    base = crop_slices(named, 0.0, 0.4)
    assert np.array_equal(base.hu, chest.hu[:8])
    np.testing.assert_array_equal(base.positions_mm, named.positions_mm[:8])
    assert crop_slices(named, 0.99, 1.0).num_slices == 1
    with pytest.raises(ConfigError, match=r"start_fraction=0\.5, stop_fraction=0\.5; expected 0 <= start < stop"):
        crop_slices(chest, 0.5, 0.5)


def test_with_spacing_all_air_and_noise(chest: CTVolume) -> None:
    wide = with_spacing(chest, (1e9, 100.0, 100.0))
    assert wide.spacing_mm == (1e9, 100.0, 100.0) and np.array_equal(wide.hu, chest.hu)
    np.testing.assert_allclose(np.diff(wide.positions_mm), 1e9)
    with pytest.raises(ConfigError, match=r"spacing_mm=\(1\.0, 0\.0, 1\.0\); expected three finite"):
        with_spacing(chest, (1.0, 0.0, 1.0))
    air = all_air(chest)
    assert (air.hu == -1000).all() and air.hu.shape == chest.hu.shape and air.spacing_mm == chest.spacing_mm
    a, b, c = uniform_noise(chest, 3), uniform_noise(chest, 3), uniform_noise(chest, 4)
    assert np.array_equal(a.hu, b.hu) and not np.array_equal(a.hu, c.hu)
    assert a.hu.min() == -1024 and a.hu.max() == 3071
    narrow = uniform_noise(chest, 3, low=-5, high=5)
    assert narrow.hu.min() == -5 and narrow.hu.max() == 5
    with pytest.raises(ConfigError, match=r"low=10, high=-10; expected -32768 <= low <= high <= 32767"):
        uniform_noise(chest, 0, low=10, high=-10)


def test_transforms_leave_their_input_unchanged(chest: CTVolume) -> None:
    before = chest.hu.copy()
    for out in (rotate_in_plane(chest, 1), flip_anterior_posterior(chest), shift_hu(chest, 7),
                crop_slices(chest, 0.2, 0.6), with_spacing(chest, (1.0, 1.0, 1.0))):
        out.hu[...] = 0
    assert np.array_equal(chest.hu, before)


# ----------------------------------------------------------------------------- cases
def test_trust_cases_cover_every_named_case_with_known_reasons() -> None:
    cases = trust_cases(size=64, num_slices=30, seed=1)
    assert [c.name for c in cases] == list(EXPECTED)
    for case in cases:
        assert case.expected_reasons and case.expected_reasons <= REASON_CODES
        assert case.expected_reasons == frozenset(EXPECTED[case.name]), case.name
        assert case.volume.hu.dtype == np.int16 and case.volume.hu.shape[1:] == (64, 64)
    by_name = {c.name: c.volume for c in cases}
    chest = make_phantom(num_slices=30, size=64, covid=False, seed=1).volume
    assert np.array_equal(by_name["neck_only"].hu, chest.hu[26:])  # round(0.85 * 30) = 26
    assert np.array_equal(by_name["base_only"].hu, chest.hu[:12])
    assert np.array_equal(by_name["hu_minus_1024"].hu.astype(int), chest.hu.astype(int) - 1024)
    assert by_name["pixel_spacing_9mm"].spacing_mm[1:] == (9.0, 9.0)
    assert by_name["slice_spacing_40mm"].spacing_mm[0] == 40.0
    assert len({c.volume.series_key for c in cases}) == len(cases)


def test_crop_cases_of_any_volume(abdomen: CTVolume) -> None:
    neck, base = crop_cases(abdomen)
    assert (neck.name, base.name) == ("neck_only", "base_only")
    assert np.array_equal(neck.volume.hu, abdomen.hu[34:]) and np.array_equal(base.volume.hu, abdomen.hu[:16])
    assert neck.expected_reasons == frozenset(EXPECTED["neck_only"])


def test_trust_case_rejects_empty_or_unknown_reasons(chest: CTVolume) -> None:
    with pytest.raises(ConfigError, match=r"TrustCase 'x': expected_reasons=\[\]; expected a non-empty subset"):
        TrustCase("x", chest, frozenset())
    with pytest.raises(ConfigError, match=r"expected_reasons=\['blurry'\]"):
        TrustCase("x", chest, frozenset({"blurry"}))
