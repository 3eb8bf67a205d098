"""``python -m initcore``: the command line of ``initcore.cli``."""

from initcore.cli import main

raise SystemExit(main())
