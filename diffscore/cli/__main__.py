"""``python -m diffscore.cli``: the ``diffscore`` command (the entry point torchrun launches)."""

import sys

from . import main

sys.exit(main())
