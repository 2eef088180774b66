from covidct.app.cli import main

raise SystemExit(main())
