"""`python -m pocketomni`: the same command line as `pocketomni`."""

from pocketomni.cli.main import main

raise SystemExit(main())
