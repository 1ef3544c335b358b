"""Values shared by every block of this package (logo and documentation links)."""

from __future__ import annotations

LOGO_URL = "https://raw.githubusercontent.com/PrefectHQ/prefect/main/docs/images/logos/prefect-logo-mark.png"
"""The logo shown next to the blocks in the Prefect UI."""

DOCUMENTATION_URL = "https://github.com/prefect-gpt-image/prefect-gpt-image#readme"
"""Where the blocks' documentation lives."""
