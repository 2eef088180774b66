"""Thin workstation client of covidct-triton: series -> gRPC request -> typed result.

Public API::

    from covidct.client import submit, submit_many, PipelineClient, TransportConfig
    result = submit("patients/P002", "localhost:8001")     # PipelineResult
    result.verdict            # "positive" | "negative" | "not_assessable" (+ result.assessment.reasons)
    outcomes = submit_many(paths, "localhost:8001", concurrency=8)

Only the HU volume and the voxel spacing leave the workstation. Command line:
``covidct-client`` / ``python -m covidct.client`` (see :mod:`covidct.client.cli`).
"""

from covidct.client.batch import ExitCode, PatientOutcome, submit_many
from covidct.client.result import DEMO_WARNING, Assessment, PipelineResult, Reason, Timings, parse_arrays
from covidct.client.submit import PipelineClient, submit
from covidct.client.transport import TransportConfig

__all__ = [
    "DEMO_WARNING",
    "Assessment",
    "ExitCode",
    "PatientOutcome",
    "PipelineClient",
    "PipelineResult",
    "Reason",
    "Timings",
    "TransportConfig",
    "parse_arrays",
    "submit",
    "submit_many",
]
