"""``python -m horizon``: the command line (what ``torchrun -m horizon scan ...`` runs on every rank)."""

import sys

from .cli import main

sys.exit(main())
