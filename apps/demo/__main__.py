"""``python -m apps.demo``: the demo's own entry (``run``, and ``tiny-llm`` for the --quick demo's LLM)."""

import sys

from apps.demo.cli import main

sys.exit(main())
