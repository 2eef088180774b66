"""The bundle's top: what people and orchestrators run.

- :mod:`covidct.app.cli`: the ``covidct`` command (serve, demo, probe, ...);
- :mod:`covidct.app.demo`: the demo of ``make demo``;
- :mod:`covidct.app.triton_install`, :mod:`covidct.app.triton_server` and :mod:`covidct.app.server_log`: a local Triton
  server found, prepared and launched, a failed start explained from its log;
- :mod:`covidct.app.supervisor` and :mod:`covidct.app.shm_regions`: the server kept alive,
  its shared-memory regions swept;
- :mod:`covidct.app.health`: the readiness and pipeline probe.

Nothing below this package imports it (``lint-imports``, docs/architecture.md).
"""
