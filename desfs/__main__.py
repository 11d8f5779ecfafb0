"""`python -m desfs` runs the command line."""

import sys

from desfs.cli import main

sys.exit(main())
