"""``python -m drift_suite.train``: the same as ``drift-suite train`` (and what ``accelerate launch -m`` runs)."""

import sys

from .trainer import main

sys.exit(main())
