"""``python -m prefect_gpt_image.cli``: the same as the ``prefect-gpt-image`` command."""

from .app import main

raise SystemExit(main())
