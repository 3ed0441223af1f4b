"""``python -m fastif_core`` = the ``fastif`` command."""

import sys

from fastif_core.cli import main

sys.exit(main())
