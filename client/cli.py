"""``covidct-client``: triage CT series on a Triton server from a workstation.

Usage::

    covidct-client SERIES [SERIES ...]            # DICOM folders/zips, NIfTI, TIFF folders
    covidct-client --patients DIR                 # every subfolder/.zip/.nii(.gz) of DIR
    covidct-client --list cases.txt               # one path per line (# comments)
    options: --url HOST:PORT  --json  --output report.json  --overlay DIR
             --concurrency 8  --timeout 300  --shared-memory auto|on|off
             --root-cert ca.pem [--client-cert c.pem --client-key k.pem]  --header KEY=VALUE
             --dicom-out DIR  --stow URL | --store HOST:PORT:AET  (DICOM SEG + SR per patient)
             --key-images [N]  (with the above: N Secondary Capture overlay images, default 6)
    covidct-client listen --aet COVIDCT --port 11112 --url TRITON --stow URL|--store ...

Exit codes (:class:`covidct.client.batch.ExitCode`, :data:`EXIT_CODES_HELP`): 0 all negative,
10 any positive, 11 any series not assessable and none positive (no failure), 2 bad
input or arguments, 3 server unavailable / wrong port / not ready, 4 deadline exceeded,
5 TLS, 6 model missing or not ready, 7 request rejected or failed on the server,
8 several patients and some failed (the report lists each), 9 answered but the DICOM
results (SEG/SR) could not be built, written or stored, 1 unexpected error. A
not-assessable series is an answer, not a failure: the rest of a batch is unaffected.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from covidct.errors import ClientError, DicomResultsError, InputError, ResultStoreError
from covidct.preprocessing.io.nifti_volume import NIFTI_SUFFIXES

from covidct.client.batch import ExitCode, batch_exit_code, submit_many
from covidct.client.pacs import DEFAULT_CALLING_AET, Destination, parse_destination
from covidct.client.report import format_table, report_json
from covidct.client.submit import DEFAULT_MODEL
from covidct.client.transport import SHARED_MEMORY_MODES, TransportConfig

PATIENT_FILE_SUFFIXES = (".zip", *NIFTI_SUFFIXES)
#: Key images per patient of a bare ``--key-images``.
DEFAULT_KEY_IMAGES = 6
EXIT_CODES_HELP = (
    "Exit codes: 0 every patient negative; 10 at least one positive; 11 at least one series not "
    "assessable (no plausible adult chest CT; reasons in the report) and none positive; 2 bad input or "
    "arguments; 3 server unavailable; 4 deadline exceeded; 5 TLS; 6 model missing/not ready; 7 request "
    "failed on the server; 8 several patients and some failed; 9 answered but the DICOM results (SEG/SR) "
    "could not be built, written or stored (--dicom-out/--stow/--store; the error names the HTTP or DIMSE "
    "status); 1 bug. Codes 0/10/11 need every patient "
    "answered; a not-assessable series is an answer, not a failure. Answers of a demo model are marked * "
    "with its warning."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct-client",
        description="Send CT series (HU volume and spacing only) to the covid_ct_pipeline "
        "ensemble on a Triton server and print the answers: positive, negative or not assessable.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("series", nargs="*", type=Path, help="DICOM folder/zip, .nii/.nii.gz or TIFF folder")
    parser.add_argument("--patients", type=Path, help="folder whose subfolders/.zip/.nii(.gz) are one patient each")
    parser.add_argument("--list", type=Path, dest="list_file", help="text file with one series path per line")
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC endpoint host:port (default %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline per request, seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries while the server cannot be reached")
    parser.add_argument("--concurrency", type=int, default=4, help="patients in flight (default %(default)s)")
    parser.add_argument("--shared-memory", choices=SHARED_MEMORY_MODES, default="auto")
    parser.add_argument("--ssl", action="store_true", help="TLS with the system's root certificates")
    parser.add_argument("--root-cert", type=Path, help="PEM root certificate(s) of the server (TLS)")
    parser.add_argument("--client-cert", type=Path, help="PEM client certificate chain (mutual TLS)")
    parser.add_argument("--client-key", type=Path, help="PEM client private key (mutual TLS)")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE", help="extra gRPC header")
    parser.add_argument("--json", action="store_true", help="print the JSON report (client/result_schema.json)")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--overlay", type=Path, metavar="DIR",
        help="write PNGs of the selected slices with the server's lung and infection masks here",
    )
    parser.add_argument(
        "--overlay-max-slices", type=int, default=0,
        help="0 = every selected slice (lung-bearing slices when none was selected)",
    )
    parser.add_argument(
        "--dicom-out", type=Path, metavar="DIR",
        help="write a DICOM SEG (lung, infection) and SR (TID 1500 report) per DICOM patient here",
    )
    parser.add_argument("--stow", metavar="URL", help="store SEG + SR through DICOMweb STOW-RS at this service root")
    parser.add_argument("--store", metavar="HOST:PORT:AET", help="store SEG + SR through DIMSE C-STORE")
    parser.add_argument("--calling-aet", default=DEFAULT_CALLING_AET, help="our AE title for --store")
    parser.add_argument(
        "--key-images", nargs="?", type=_key_image_count, const=DEFAULT_KEY_IMAGES, default=0, metavar="N",
        help=f"with --dicom-out/--stow/--store: also a Secondary Capture series of N overlay images per patient "
        f"(default {DEFAULT_KEY_IMAGES}; the most infected selected slices, else evenly spaced lung slices)",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _key_image_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a slice count >= 0")
    return count


def collect_inputs(series: Sequence[Path], patients: Path | None, list_file: Path | None) -> list[Path]:
    """Every input path, in the order given; InputError for a missing folder or list."""
    inputs = list(series)
    if patients is not None:
        if not patients.is_dir():
            raise InputError(f"--patients {patients}: not a folder")
        inputs.extend(
            p for p in sorted(patients.iterdir())
            if p.is_dir() or p.name.lower().endswith(PATIENT_FILE_SUFFIXES)
        )
    if list_file is not None:
        try:
            lines = list_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"--list {list_file}: cannot be read ({exc.strerror})") from exc
        for line in lines:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                path = Path(entry)
                inputs.append(path if path.is_absolute() else list_file.parent / path)
    if not inputs:
        raise InputError("no series given: pass SERIES paths, --patients DIR or --list FILE")
    return inputs


def transport_from_args(args: argparse.Namespace) -> TransportConfig:
    headers = []
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--header {item!r}: expected KEY=VALUE")
        headers.append((key.strip().lower(), value))
    return TransportConfig(
        timeout_s=args.timeout,
        retries=args.retries,
        shared_memory=args.shared_memory,
        ssl=args.ssl,
        root_certificates=args.root_cert,
        private_key=args.client_key,
        certificate_chain=args.client_cert,
        headers=tuple(headers),
    )


def _overlay_hook(out_dir: Path, max_slices: int):
    from covidct.client.overlay import write_overlays

    def after(label, volume, result) -> None:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(label).name.removesuffix(".gz")) or "series"
        write_overlays(volume, result, out_dir / name, name=name, max_slices=max_slices)

    return after


def _dicom_hook(out_dir: Path | None, destination: Destination | None, key_images: int = 0):
    from covidct.client.dicom_results import dicom_results_for, write_dicom_results
    from covidct.client.dicom_seg import DicomOutputConfig

    config = DicomOutputConfig(key_images=key_images)

    def after(label, volume, result) -> None:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(label).name) or "series"
        try:
            results = dicom_results_for(label, volume, result, config)
            if out_dir is not None:
                write_dicom_results(results, out_dir, name)
            if destination is not None:
                destination.store(results.datasets)
        except ResultStoreError as exc:
            raise ResultStoreError(f"answered {result.verdict}, results not stored: {exc}", exc.status) from exc
        except DicomResultsError as exc:
            raise type(exc)(f"answered {result.verdict}, no DICOM results: {exc}") from exc

    return after


def _hooks(*hooks):
    active = [hook for hook in hooks if hook is not None]
    if not active:
        return None

    def after(label, volume, result) -> None:
        for hook in active:
            hook(label, volume, result)

    return after


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring).

    ``covidct-client listen ...`` runs the DICOM node (:func:`covidct.client.listener.listen_main`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["listen"]:
        from covidct.client.listener import listen_main

        return listen_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        inputs = collect_inputs(args.series, args.patients, args.list_file)
        transport = transport_from_args(args)
        destination = parse_destination(args.stow, args.store, args.calling_aet)
        if args.key_images and args.dicom_out is None and destination is None:
            raise InputError("--key-images: key images go with the DICOM results; add --dicom-out, --stow or --store")
    except InputError as exc:
        print(f"covidct-client: {exc}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    except ClientError as exc:  # TransportConfig's checks (timeouts, retries)
        print(f"covidct-client: {exc}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    outcomes = submit_many(
        [str(p) for p in inputs],
        args.url,
        model=args.model,
        transport=transport,
        concurrency=max(1, args.concurrency),
        progress=len(inputs) > 1 and not args.no_progress,
        after=_hooks(
            _overlay_hook(args.overlay, args.overlay_max_slices) if args.overlay else None,
            _dicom_hook(args.dicom_out, destination, args.key_images) if args.dicom_out or destination else None,
        ),
    )
    document = report_json(outcomes, url=args.url, model=args.model)
    if args.output is not None:
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(document + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"covidct-client: --output {args.output}: {exc.strerror}", file=sys.stderr)
    if args.json:
        print(document)
    else:
        print(format_table(outcomes))
    for outcome in outcomes:
        if not outcome.ok:
            print(f"covidct-client: {outcome.input}: {outcome.error_type}: {outcome.error}", file=sys.stderr)
    return int(batch_exit_code(outcomes))
