"""Send result objects to a PACS: DICOMweb STOW-RS (dicomweb-client) or DIMSE C-STORE (pynetdicom).

:func:`parse_destination` turns the command line's ``--stow URL`` / ``--store HOST:PORT:AET``
into a :class:`StowDestination` or :class:`StoreDestination`; both have
``store(datasets)``. A PACS that is down, refuses the association or answers with a
failure status raises :class:`~covidct.errors.ResultStoreError` carrying the HTTP or
DIMSE status (``None`` when nothing answered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from covidct.errors import InputError, ResultStoreError

#: DIMSE statuses that mean "stored" (0x0000 success, 0xB000/0xB006/0xB007 warnings).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
DEFAULT_CALLING_AET = "COVIDCT"


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb service root (``http://host:port/dicom-web``); ``timeout_s`` per request (s)."""

    url: str
    timeout_s: float = 60.0

    def describe(self) -> str:
        return f"STOW-RS {self.url}"

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store ``datasets`` in one STOW-RS request; ResultStoreError with the HTTP status."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        try:
            client = DICOMwebClient(url=self.url, timeout=self.timeout_s)
            client.set_http_retry_params(retry=False)
            response = client.store_instances(list(datasets))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise ResultStoreError(f"{self.describe()}: the PACS refused the results (HTTP {status})", status) from exc
        except requests.RequestException as exc:
            raise ResultStoreError(f"{self.describe()}: the PACS cannot be reached ({exc})") from exc
        failed = list(getattr(response, "FailedSOPSequence", []))
        if failed:
            reason = int(failed[0].get("FailureReason", 0))
            raise ResultStoreError(
                f"{self.describe()}: {len(failed)} of {len(datasets)} objects refused "
                f"(failure reason 0x{reason:04X})", reason,
            )


@dataclass(frozen=True)
class StoreDestination:
    """A DIMSE storage SCP: ``host``, ``port``, called AE title ``aet``; timeouts in seconds."""

    host: str
    port: int
    aet: str
    calling_aet: str = DEFAULT_CALLING_AET
    timeout_s: float = 30.0

    def describe(self) -> str:
        return f"C-STORE {self.aet}@{self.host}:{self.port}"

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store ``datasets`` over one association; ResultStoreError with the DIMSE status."""
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.host, self.port, ae_title=self.aet)
        if not assoc.is_established:
            what = "rejected the association" if assoc.is_rejected else "cannot be reached or aborted"
            raise ResultStoreError(f"{self.describe()}: the PACS {what}")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status is not None and "Status" in status else None
                if code not in STORED_STATUSES:
                    shown = "no answer" if code is None else f"DIMSE status 0x{code:04X}"
                    raise ResultStoreError(
                        f"{self.describe()}: {ds.Modality} {ds.SOPInstanceUID} not stored ({shown})", code
                    )
        finally:
            if assoc.is_established:
                assoc.release()


Destination = StowDestination | StoreDestination


def parse_store_address(text: str, calling_aet: str = DEFAULT_CALLING_AET) -> StoreDestination:
    """``HOST:PORT:AET`` -> :class:`StoreDestination`; InputError naming the value otherwise."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise InputError(f"--store {text!r}: expected HOST:PORT:AET")
    host, port_text, aet = parts
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"--store {text!r}: port {port_text!r} is not in 1..65535")
    if len(aet) > 16:
        raise InputError(f"--store {text!r}: AE title {aet!r} is longer than 16 characters")
    return StoreDestination(host, int(port_text), aet, calling_aet=calling_aet)


def parse_destination(
    stow: str | None, store: str | None, calling_aet: str = DEFAULT_CALLING_AET
) -> Destination | None:
    """The destination of ``--stow URL`` or ``--store HOST:PORT:AET`` (at most one), or ``None``."""
    if stow and store:
        raise InputError("--stow and --store: give one destination, not both")
    if stow:
        if not stow.startswith(("http://", "https://")):
            raise InputError(f"--stow {stow!r}: expected an http(s):// DICOMweb service root")
        return StowDestination(stow.rstrip("/"))
    if store:
        return parse_store_address(store, calling_aet)
    return None
