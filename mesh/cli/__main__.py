"""``python -m mesh.cli``: the mesh command."""

import sys

from .app import main

sys.exit(main())
