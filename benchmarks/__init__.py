"""benchmarks package of covidct-triton."""
