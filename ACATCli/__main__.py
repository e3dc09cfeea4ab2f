"""``python -m ACATCli ...`` = ``acat ...`` (what the Slicer module and the web viewer run as their child)."""

import sys

from .main import main

sys.exit(main())
