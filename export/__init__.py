"""export package of covidct-triton."""
