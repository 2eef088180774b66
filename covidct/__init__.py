"""covidct-triton: COVID-19 chest CT triage served by NVIDIA Triton."""

__version__ = "0.1.0"
