"""export package of covidct-triton: checkpoint -> ONNX (+ parity), TensorRT FP16 engine
build, model runners, model repository generation and validation.

Entry points: ``python -m covidct.export`` (CLI), :func:`covidct.export.repository.build_repository`,
:func:`covidct.export.onnx_export.export_checkpoint`, :func:`covidct.export.validate.validate_repository`.
See ``export/README.md``. This package file imports nothing: the Triton Python-backend
stub imports :mod:`covidct.serving.runners` and must not pay for torch or onnx.
"""
