"""``python -m trl_ext.curriculum.offline_variants``: see :mod:`trl_ext.curriculum.offline_variants`."""

import sys

from trl_ext.curriculum.offline_variants.cli import main

if __name__ == "__main__":
    sys.exit(main())
