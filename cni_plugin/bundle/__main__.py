"""PyInstaller's entry script for the bundle (and `python -m cni_plugin.bundle`, named by argv[0])."""

import sys

from cni_plugin.bundle.main import main

sys.exit(main())
