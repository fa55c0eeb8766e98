"""``python -m train.clip``."""

import sys

from train.clip.cli import main

sys.exit(main())
