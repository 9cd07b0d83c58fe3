"""``python -m sane.cli``: the `sane` command."""

import sys

from sane.cli.main import main

sys.exit(main())
