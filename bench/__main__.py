"""``python -m bench``: run the benchmark cases, print each figure beside its target, write JSON."""

from bench.cli import main

raise SystemExit(main())
