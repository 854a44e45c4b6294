"""``python -m trl_ext.drift``: see :mod:`trl_ext.drift`."""

import sys

from trl_ext.drift.cli import main

sys.exit(main())
