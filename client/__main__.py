"""``python -m covidct.client``: the ``covidct-client`` command line."""

from covidct.client.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
