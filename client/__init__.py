"""client package of covidct-triton."""
