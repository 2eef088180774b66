"""A DICOM node: receive CT series by C-STORE, triage each on Triton, send SEG + SR to a PACS.

``covidct-client listen --aet COVIDCT --port 11112 --url TRITON --stow URL|--store HOST:PORT:AET``

* :class:`SeriesCollector` (no sockets; thread-safe) keeps the received instances of each
  series in a folder of its own, answers every store with a DIMSE status and says which
  series have been quiet for ``quiet_s`` seconds. Bounded: at most ``max_series`` series
  held or in flight and ``max_bytes`` bytes held; a store that would exceed either is
  answered 0xA700 (out of resources), and a series that overflowed is dropped, not
  triaged half. Instances that are not CT images are accepted (0x0000) and ignored with a
  log line; an instance without Series/SOP Instance UID is answered 0xC210.
* :class:`ListenerNode` runs the pynetdicom storage SCP, a scheduler thread and a pool of
  ``max_series`` workers; each worker reads the series, sends HU + spacing to Triton, builds
  SEG + SR from the received headers and stores them at the destination. A failure is
  logged for that series; the node goes on (an aborted association leaves the instances
  received so far, triaged when quiet).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset

from covidct.errors import CovidCTError, InputError

from covidct.client.pacs import DEFAULT_CALLING_AET, Destination, parse_destination

LOG = logging.getLogger("covidct.listener")
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class ListenerConfig:
    """The node's settings: AE title, bind address and port, quiet time (s), bounds, work folder."""

    aet: str = "COVIDCT"
    port: int = 11112
    bind: str = "0.0.0.0"
    quiet_s: float = 10.0
    max_series: int = 4
    max_bytes: int = 2 << 30
    poll_s: float = 0.5
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        if not (0 < self.port < 65536 and self.quiet_s >= 0 and self.max_series >= 1 and self.max_bytes > 0):
            raise InputError(
                f"listener: port {self.port} (1..65535), quiet {self.quiet_s} s (>= 0), max series "
                f"{self.max_series} (>= 1), max bytes {self.max_bytes} (> 0) out of range"
            )


@dataclass
class PendingSeries:
    """One series being received: its folder, bytes held, instance count, last store time (s)."""

    uid: str
    folder: Path
    nbytes: int = 0
    instances: int = 0
    last_seen: float = 0.0
    overflowed: bool = False
    in_flight: bool = field(default=False)


class SeriesCollector:
    """Groups received instances by series under ``root``; see the module docstring."""

    def __init__(self, root: Path, max_series: int, max_bytes: int, quiet_s: float) -> None:
        self.root = Path(root)
        self.max_series, self.max_bytes, self.quiet_s = max_series, max_bytes, quiet_s
        self._series: dict[str, PendingSeries] = {}
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._series.values())

    @property
    def series_count(self) -> int:
        with self._lock:
            return len(self._series)

    def offer(self, dataset: Dataset, encoded: bytes, now: float) -> int:
        """Keep one received instance (``encoded``: the file bytes); return the DIMSE status."""
        sop_class = str(dataset.get("SOPClassUID", ""))
        series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
        sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
        if not series_uid or not sop_uid:
            LOG.warning("instance without SeriesInstanceUID/SOPInstanceUID refused (0xC210)")
            return STATUS_CANNOT_UNDERSTAND
        if str(dataset.get("Modality", "")) != "CT" or sop_class != CT_IMAGE_STORAGE:
            LOG.info("ignored %s instance %s (modality %s): not a CT image", sop_class, sop_uid,
                     dataset.get("Modality", "?"))
            return STATUS_SUCCESS
        with self._lock:
            series = self._series.get(series_uid)
            if series is None:
                if len(self._series) >= self.max_series:
                    LOG.warning("series %s refused (0xA700): %d series held", series_uid, len(self._series))
                    return STATUS_OUT_OF_RESOURCES
                key = hashlib.sha256(series_uid.encode()).hexdigest()[:16]
                series = PendingSeries(series_uid, self.root / key)
                series.folder.mkdir(parents=True, exist_ok=True)
                self._series[series_uid] = series
            held = sum(s.nbytes for s in self._series.values())
            if series.in_flight or held + len(encoded) > self.max_bytes:
                series.overflowed = True
                LOG.warning("instance %s refused (0xA700): %d bytes held of %d", sop_uid, held, self.max_bytes)
                return STATUS_OUT_OF_RESOURCES
            path = series.folder / f"{hashlib.sha256(sop_uid.encode()).hexdigest()[:24]}.dcm"
            if not path.exists():
                series.nbytes += len(encoded)
                series.instances += 1
            path.write_bytes(encoded)
            series.last_seen = now
        return STATUS_SUCCESS

    def due(self, now: float) -> list[PendingSeries]:
        """Series quiet for ``quiet_s`` seconds, marked in flight (overflowed ones are dropped)."""
        ready = []
        with self._lock:
            for series in list(self._series.values()):
                if series.in_flight or now - series.last_seen < self.quiet_s:
                    continue
                if series.overflowed:
                    LOG.error("series %s dropped: it exceeded the bounds (%d bytes held)", series.uid, series.nbytes)
                    self._release(series)
                    continue
                series.in_flight = True
                ready.append(series)
        return ready

    def finish(self, series: PendingSeries) -> None:
        """Forget a processed series and delete its folder."""
        with self._lock:
            self._release(series)

    def _release(self, series: PendingSeries) -> None:
        self._series.pop(series.uid, None)
        shutil.rmtree(series.folder, ignore_errors=True)


def triage_folder(folder: Path, url: str, destination: Destination, *, model: str | None = None,
                  timeout_s: float = 300.0) -> str:
    """Read one received series, triage it on Triton, store SEG + SR; returns the answer."""
    from covidct.client.dicom_results import dicom_results_for
    from covidct.client.submit import DEFAULT_MODEL, PipelineClient, read_volume
    from covidct.client.transport import TransportConfig

    volume, read_s = read_volume(folder)
    with PipelineClient(url, model=model or DEFAULT_MODEL, transport=TransportConfig(timeout_s=timeout_s)) as client:
        client.wait_ready()
        result = client.infer_volume(volume, read_s=read_s)
    destination.store(dicom_results_for(folder, volume, result).datasets)
    return result.verdict


class ListenerNode:
    """The storage SCP with its scheduler and workers; ``start()`` / ``stop()``."""

    def __init__(self, config: ListenerConfig, url: str, destination: Destination, *, model: str | None = None):
        self.config, self.url, self.destination, self.model = config, url, destination, model
        self._tmp = None if config.work_dir else tempfile.TemporaryDirectory(prefix="covidct_listener_")
        root = Path(config.work_dir) if config.work_dir else Path(self._tmp.name)
        self.collector = SeriesCollector(root, config.max_series, config.max_bytes, config.quiet_s)
        self.answers: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=config.max_series, thread_name_prefix="covidct-triage")
        self._server = None
        self._scheduler: threading.Thread | None = None

    def _on_store(self, event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            encoded = event.encoded_dataset()
        except Exception as exc:  # noqa: BLE001 - any undecodable instance is answered, never fatal
            LOG.warning("malformed instance refused (0xC210): %s", exc)
            return STATUS_CANNOT_UNDERSTAND
        return self.collector.offer(dataset, encoded, time.monotonic())

    def _process(self, series: PendingSeries) -> None:
        try:
            verdict = triage_folder(series.folder, self.url, self.destination, model=self.model)
            self.answers.append((series.uid, verdict))
            LOG.info("series %s (%d instances): %s; SEG + SR sent to %s", series.uid, series.instances, verdict,
                     self.destination.describe())
        except CovidCTError as exc:
            self.answers.append((series.uid, f"error: {type(exc).__name__}"))
            LOG.error("series %s failed: %s: %s", series.uid, type(exc).__name__, exc)
        except Exception:
            self.answers.append((series.uid, "error: unexpected"))
            LOG.exception("series %s failed unexpectedly", series.uid)
        finally:
            self.collector.finish(series)

    def _schedule(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            for series in self.collector.due(time.monotonic()):
                self._pool.submit(self._process, series)

    def start(self) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.aet)
        for context in AllStoragePresentationContexts:  # compressed CT (JPEG Lossless) too
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((self.config.bind, self.config.port), block=False, evt_handlers=handlers)
        self._scheduler = threading.Thread(target=self._schedule, name="covidct-scheduler", daemon=True)
        self._scheduler.start()
        LOG.info("listening as %s on %s:%d", self.config.aet, self.config.bind, self.config.port)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._scheduler is not None:
            self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=True)
        if self._tmp is not None:
            self._tmp.cleanup()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct-client listen",
        description="A DICOM node: receive CT series by C-STORE, triage each on Triton when it has been "
        "quiet, and store the DICOM SEG + SR at a PACS.",
    )
    parser.add_argument("--aet", default="COVIDCT", help="our AE title (default %(default)s)")
    parser.add_argument("--port", type=int, default=11112)
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC endpoint host:port")
    parser.add_argument("--model", default=None)
    parser.add_argument("--stow", metavar="URL", help="DICOMweb service root for SEG + SR")
    parser.add_argument("--store", metavar="HOST:PORT:AET", help="C-STORE destination for SEG + SR")
    parser.add_argument("--calling-aet", default=DEFAULT_CALLING_AET)
    parser.add_argument("--quiet-seconds", type=float, default=10.0, help="triage a series this long after its "
                        "last instance (default %(default)s)")
    parser.add_argument("--max-series", type=int, default=4, help="series held or in flight at most")
    parser.add_argument("--max-mb", type=float, default=2048.0, help="MiB of received instances held at most")
    parser.add_argument("--work-dir", type=Path, help="folder for received instances (default: a temporary one)")
    return parser


def listen_main(argv: Sequence[str]) -> int:
    """Run the node until interrupted (SIGINT/SIGTERM); 0 on a clean stop, 2 for bad arguments."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        destination = parse_destination(args.stow, args.store, args.calling_aet)
        if destination is None:
            raise InputError("listen: give --stow URL or --store HOST:PORT:AET")
        config = ListenerConfig(
            aet=args.aet, port=args.port, bind=args.bind, quiet_s=args.quiet_seconds,
            max_series=args.max_series, max_bytes=int(args.max_mb * (1 << 20)), work_dir=args.work_dir,
        )
    except InputError as exc:
        print(f"covidct-client listen: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    node = ListenerNode(config, args.url, destination, model=args.model)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    node.start()
    try:
        stopped.wait()
    finally:
        node.stop()
    return 0
