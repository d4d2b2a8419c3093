"""``python -m hopekit <command>`` (also what ``torchrun -m hopekit`` runs)."""

import sys

from hopekit.cli import main

sys.exit(main())
