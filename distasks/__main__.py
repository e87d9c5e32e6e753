"""`python -m distasks` runs the same command line as the `distasks` script."""

from distasks.cli import main

raise SystemExit(main())
