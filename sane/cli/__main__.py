"""``python -m sane.cli``: the `sane` command."""

import sys

from sane.cli.command import main

sys.exit(main())
