"""The one exception hierarchy of covidct-triton.

Every error the bundle raises on purpose derives from :class:`CovidCTError`. Input
problems also derive from :class:`ValueError`, so generic callers can catch them the
usual way. Messages name the file, the DICOM tag ``(gggg,eeee)`` or the tensor, the
value found and what was expected; low-level causes are chained with ``raise ... from``.

Layout::

    CovidCTError
    +-- InputError (ValueError)            bad data handed to the bundle
    |   +-- SeriesReadError                a series cannot be turned into a volume
    |   |   +-- EmptySeriesError           folder/zip holds no usable file
    |   |   +-- NotDicomError              0-byte or non-DICOM file
    |   |   +-- MissingPixelDataError      (7FE0,0010) absent
    |   |   +-- PixelDecodeError           corrupt or undecodable pixel data
    |   |   +-- ModalityError              (0008,0060) is not CT
    |   |   +-- GeometryMismatchError      mixed (0028,0010)/(0028,0011), orientation
    |   |   |   +-- ObliqueSeriesError     (0020,0037) oblique or gantry-tilted
    |   |   +-- DuplicatePositionError     two slices at one position
    |   |   +-- RescaleMissingError        (0028,1052)/(0028,1053) absent
    |   |   +-- RescaleValueError          slope zero/not finite, intercept not finite
    |   |   +-- TooFewSlicesError          one slice only
    |   |   +-- TooManySlicesError         above the configured maximum
    |   |   +-- UnsafeArchivePathError     zip entry pointing outside its root
    |   |   +-- UnsupportedFormatError     not DICOM/zip/NIfTI/TIFF/array
    |   |   +-- MixedSeriesError           no rule picks one series
    |   |   +-- MixedPatientsError         files of several patients or studies
    |   |   +-- ResourceLimitError         a size limit of ReaderConfig exceeded
    |   |   +-- ImplausibleSpacingError    pixel/slice spacing outside its range
    |   +-- VolumeError                    an in-memory volume has the wrong dtype/shape
    |   +-- TensorInputError               a server request tensor is malformed
    +-- ConfigError (ValueError)           a config or checkpoint does not fit
    |   +-- CheckpointError
    +-- DatasetError (ValueError)          training data layout problems
    |   +-- GrayMapError                   an 8-bit image's gray-to-HU map cannot be estimated
    +-- ExportError                        export / repository generation failed
    |   +-- ParityError                    exported model disagrees with torch
    |   +-- TensorRTUnavailableError       TensorRT is not installed here
    +-- ServerError                        Triton launcher problems
    |   +-- RestartLimitError              the supervisor gave up restarting
    +-- ClientError                        client-side transport problems
        +-- ServerUnavailableError         nothing (Triton) answers / server not ready
        +-- ModelNotReadyError             model missing or not ready
        +-- DeadlineExceededError          client_timeout passed
        +-- TLSConfigError                 bad certificates or TLS handshake failure
        +-- InferenceFailedError           the server rejected or failed the request
    +-- DicomResultsError                  DICOM SEG/SR of a patient not built, written or stored
        +-- SourceHeaderError (ValueError) source headers lack what SEG/SR need
        +-- ResultStoreError               the PACS is down or refused (HTTP/DIMSE status)
"""

from __future__ import annotations


def dicom_tag(group: int, element: int) -> str:
    """Format a DICOM tag the way error messages show it: ``(0028,0010)``."""
    return f"({group:04X},{element:04X})"


class CovidCTError(Exception):
    """Base of every error raised on purpose by covidct-triton."""


# ----------------------------------------------------------------------------- input
class InputError(CovidCTError, ValueError):
    """Bad data handed to the bundle (files, arrays, request tensors)."""


class SeriesReadError(InputError):
    """A patient series cannot be turned into one CT volume."""


class EmptySeriesError(SeriesReadError):
    """A folder or archive holds no usable file."""


class NotDicomError(SeriesReadError):
    """A file is empty or is not DICOM."""


class MissingPixelDataError(SeriesReadError):
    """A DICOM image has no Pixel Data (7FE0,0010)."""


class PixelDecodeError(SeriesReadError):
    """Pixel data is corrupt, truncated, or needs a decoder that is not installed."""


class ModalityError(SeriesReadError):
    """A series is not CT (0008,0060)."""


class GeometryMismatchError(SeriesReadError):
    """Slices disagree in Rows/Columns, orientation or spacing."""


class DuplicatePositionError(SeriesReadError):
    """Two slices share one patient position."""


class ObliqueSeriesError(GeometryMismatchError):
    """Image Orientation (Patient) (0020,0037) too far off the patient axes (oblique, tilted)."""


class RescaleMissingError(SeriesReadError):
    """Rescale Intercept (0028,1052) or Rescale Slope (0028,1053) is missing."""


class RescaleValueError(SeriesReadError):
    """Rescale Slope (0028,1053) is zero or not finite, or Rescale Intercept (0028,1052) is not finite."""


class TooFewSlicesError(SeriesReadError):
    """A series has fewer slices than a volume needs."""


class TooManySlicesError(SeriesReadError):
    """A series has more slices than the configured maximum."""


class UnsafeArchivePathError(SeriesReadError):
    """A zip entry would resolve outside the archive's root."""


class UnsupportedFormatError(SeriesReadError):
    """The path is none of DICOM folder/zip, NIfTI, TIFF folder or numpy array."""


class MixedSeriesError(SeriesReadError):
    """Several series are present and the selection rule cannot pick one."""


class MixedPatientsError(SeriesReadError):
    """The files of one input belong to several patients (0010,0020) or studies (0020,000D)."""


class ResourceLimitError(SeriesReadError):
    """An input exceeds a size limit (file, entry count, compression ratio, memory budget)."""


class ImplausibleSpacingError(SeriesReadError):
    """Pixel or slice spacing (mm) is missing, not finite, or outside its accepted range."""


class VolumeError(InputError):
    """An in-memory volume or array has the wrong dtype, rank or shape."""


class TensorInputError(InputError):
    """A request tensor sent to a Triton model is malformed (name, dtype, shape, value)."""


class NoOpenLungError(InputError):
    """Open-lung slice selection finds no dark (aerated) pixel in any slice's region."""


# ---------------------------------------------------------------------------- config
class ConfigError(CovidCTError, ValueError):
    """A configuration file or value does not fit what the code expects."""


class CheckpointError(ConfigError):
    """A checkpoint is missing, corrupt, or its config does not match the network."""


class DatasetError(CovidCTError, ValueError):
    """A training/evaluation data set has a layout or label problem."""


class GrayMapError(DatasetError):
    """An 8-bit windowed image whose gray-to-HU map cannot be estimated from its own content."""


# ---------------------------------------------------------------------------- export
class ExportError(CovidCTError):
    """Exporting a model or generating a model repository failed."""


class ParityError(ExportError):
    """An exported model's outputs differ from the reference beyond tolerance."""


class TensorRTUnavailableError(ExportError):
    """TensorRT is not importable on this machine."""


# --------------------------------------------------------------------------- serving
class ServerError(CovidCTError):
    """Starting, reaching or stopping the Triton server failed."""


class RestartLimitError(ServerError):
    """A supervised server failed more often in a row than its restart limit allows."""


class ClientError(CovidCTError):
    """The client could not complete a request (transport, server, deadline)."""


# ------------------------------------------------------------------------ benchmarks
class BenchmarkToolError(CovidCTError):
    """An external benchmark tool (perf_analyzer) is missing, failed or wrote no results."""


class ServerUnavailableError(ClientError):
    """No Triton gRPC endpoint answers at the address (down, wrong port, not ready)."""


class ModelNotReadyError(ClientError):
    """The server answers but the requested model is missing or not ready."""


class DeadlineExceededError(ClientError):
    """The request's deadline (``client_timeout``) passed; it may have run on the server."""


class TLSConfigError(ClientError):
    """TLS certificates/keys are missing or invalid, or the TLS handshake failed."""


class InferenceFailedError(ClientError):
    """The server received the request and rejected it or failed while running it."""


# ---------------------------------------------------------------------- DICOM results
class DicomResultsError(CovidCTError):
    """The DICOM result objects (SEG, SR) of one patient could not be built, written or stored."""


class SourceHeaderError(DicomResultsError, ValueError):
    """The source series' headers lack what a DICOM SEG/SR needs (UIDs, geometry)."""


class ResultStoreError(DicomResultsError):
    """A PACS is down or refused the result objects (STOW-RS HTTP status, C-STORE DIMSE status).

    ``status``: the HTTP or DIMSE status code, ``None`` when no answer came (connection).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
