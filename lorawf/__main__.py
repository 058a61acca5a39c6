"""``python -m lorawf`` runs the command line."""

from lorawf.cli import run

run()
