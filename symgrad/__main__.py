"""``python -m symgrad``: the same as the ``symgrad`` command."""

import sys

from symgrad.cli import main

sys.exit(main())
