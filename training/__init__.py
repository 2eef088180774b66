"""training package of covidct-triton."""
