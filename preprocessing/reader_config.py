"""The reader's settings: which files, headers and sizes are accepted when files become a ``CTVolume``.

:class:`ReaderConfig` picks one series from a folder, bounds the obliqueness of the
slices (degrees), chooses the pixel decoder and holds the limits checked from headers
before anything is allocated or inflated (bytes, file counts, pixels, mm). It is the
``reader`` section of :class:`~covidct.preprocessing.config.PipelineConfig` (so it travels
with a model) and is used on its own by the readers (:mod:`covidct.preprocessing.io`), the
client and the server's request validation, none of which need the stage configs.
"""

from __future__ import annotations

from dataclasses import dataclass

from covidct.errors import ConfigError
from covidct.preprocessing.config_json import check_interval, check_range

PIXEL_DECODERS = ("auto", "nvimgcodec", "gdcm", "pylibjpeg")
"""``ReaderConfig.decoder`` values; after ``"auto"``, most preferred first
(:mod:`covidct.preprocessing.io.pixel_decoders`)."""


@dataclass(frozen=True)
class ReaderConfig:
    """Series reading and validation.

    series_rule: how to pick one series from a folder that holds several:
        ``"most_slices"`` (axial CT series with the most slices; ties broken by the
        smallest slice thickness) or ``"thinnest"`` (smallest slice spacing first).
    max_oblique_deg: the most a direction cosine of Image Orientation (Patient)
        (0020,0037) may lie off its patient axis (degrees); within it the series is read
        as the nearest axis-aligned orientation (3 degrees move a point 250 mm from the
        centre by 13 mm: within how far patients lie rotated on the table); beyond it
        (oblique reformats, gantry tilt) the series is refused. Gaps between slice
        positions are not checked here: ``AssessmentConfig.gap_tolerance`` (server).
    decode_workers: processes for pixel decoding; 0 means ``os.cpu_count()``.
    decoder: pixel decoder of compressed DICOM: ``"auto"`` (nvImageCodec where it and a
        CUDA GPU are present, else GDCM, else pylibjpeg; all decode exactly),
        ``"nvimgcodec"``, ``"gdcm"`` or ``"pylibjpeg"``
        (:mod:`covidct.preprocessing.io.pixel_decoders`).

    Limits checked from headers before anything is allocated or inflated:
    max_volume_bytes: the decoded int16 volume ``[N, H, W]`` (N x H x W x 2 bytes); also
        the declared total of a zip's entries. A NIfTI file may hold 4 times this (float64).
    max_file_bytes: one DICOM or TIFF file, or one zip entry (declared size), in bytes.
    max_files: files listed in a folder, or entries in a zip archive.
    max_compression_ratio: a zip entry over 1 MiB inflating to more than this many times
        its compressed size is refused.
    matrix_size_px: (min, max) pixels of Rows (0028,0010) and Columns (0028,0011) (NIfTI
        in-plane axes, TIFF pages).
    pixel_spacing_mm / slice_spacing_mm: accepted (low, high) mm of the in-plane pixel
        spacing and of the distance between slices (DICOM, NIfTI, a given ``spacing_mm``).
        Outside them a header is corrupt, not just coarse: an adult chest over a 32-pixel
        matrix is 11.25 mm per pixel, over 6 slices about 52 mm apart. A plausible chest
        CT's narrower ranges are ``AssessmentConfig``'s (an answer, not an error).
    """

    min_slices: int = 2
    max_slices: int = 2000
    series_rule: str = "most_slices"
    max_oblique_deg: float = 3.0
    decode_workers: int = 0
    decoder: str = "auto"
    max_volume_bytes: int = 4 * 1024**3
    max_file_bytes: int = 256 * 1024**2
    max_files: int = 10_000
    max_compression_ratio: float = 200.0
    matrix_size_px: tuple[int, int] = (32, 4096)
    pixel_spacing_mm: tuple[float, float] = (0.1, 12.0)
    slice_spacing_mm: tuple[float, float] = (0.1, 60.0)

    def __post_init__(self) -> None:
        owner = "ReaderConfig"
        for name in ("max_volume_bytes", "max_file_bytes", "max_files"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{owner}.{name}={value!r}; expected a positive integer")
        check_range(owner, "max_compression_ratio", self.max_compression_ratio, 1.0, 1e9)
        check_range(owner, "max_oblique_deg", self.max_oblique_deg, 0.0, 45.0)
        size = self.matrix_size_px
        if not (isinstance(size, (tuple, list)) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
                and 1 <= size[0] <= size[1] <= 65535):
            raise ConfigError(
                f"{owner}.matrix_size_px={size!r}; expected integers (low, high) with 1 <= low <= high <= 65535"
            )
        check_interval(owner, "pixel_spacing_mm", self.pixel_spacing_mm, 0.0, 1000.0)
        check_interval(owner, "slice_spacing_mm", self.slice_spacing_mm, 0.0, 1000.0)
        if self.decoder not in PIXEL_DECODERS:
            raise ConfigError(f"{owner}.decoder={self.decoder!r}; expected one of {list(PIXEL_DECODERS)}")
