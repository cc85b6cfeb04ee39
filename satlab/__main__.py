"""``python -m satlab`` is the ``satlab`` command."""

import sys

from satlab.cli import main

sys.exit(main())
