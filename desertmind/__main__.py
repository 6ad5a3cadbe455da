"""``python -m desertmind``: the same as the ``desertmind`` console script."""

import sys

from desertmind.cli.main import main

sys.exit(main())
