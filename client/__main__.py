"""``python -m client``: the ``covidct-client`` command line."""

from client.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
