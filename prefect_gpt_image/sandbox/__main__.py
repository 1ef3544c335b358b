"""``python -m prefect_gpt_image.sandbox``: serve the sandbox in the foreground."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
