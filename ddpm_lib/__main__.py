"""``python -m ddpm_lib``: see :mod:`ddpm_lib.cli`."""

import sys

from .cli import main

sys.exit(main())
