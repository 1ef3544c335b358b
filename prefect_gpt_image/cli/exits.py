"""The command's exit codes, the one place they are defined and explained (``--help`` shows
:data:`EPILOG`), and which error ends in which."""

from __future__ import annotations

from prefect_gpt_image.api.errors import GptImageError

__all__ = [
    "BUDGET",
    "CONFIGURATION",
    "EPILOG",
    "FAILED",
    "INTERRUPTED",
    "OK",
    "USAGE",
    "UsageError",
    "exit_code",
]

OK = 0
"""Every call (or row) made or served from the store."""
FAILED = 1
"""A call or a batch row failed (the API refused it, an image was not delivered, ...)."""
USAGE = 2
"""The command line or an input is wrong: an unknown verb or option, an invalid value or size, a
missing or invalid input image, manifest or steps file, ``--api-key``. Nothing was sent."""
CONFIGURATION = 3
"""No API key may be used (none found, or it belongs to another host), or a saved block is
missing. Nothing was sent."""
BUDGET = 4
"""The settings' budget (``max_images_per_run``, ``max_cost_per_run``) would be exceeded.
Nothing more was sent."""
INTERRUPTED = 130
"""Ctrl-C."""

EPILOG = (
    "exit codes: 0 ok; 1 a call or batch row failed; 2 usage error (unknown verb or option, "
    "invalid value, bad input file; nothing sent); 3 no usable API key or saved block (nothing "
    "sent); 4 over the settings' budget (nothing more sent); 130 interrupted."
)


class UsageError(GptImageError, ValueError):
    """A mistake on the command line found by the command itself (exit code 2)."""


def exit_code(error: BaseException) -> int:
    """The exit code for ``error``, raised by a verb."""
    from prefect.exceptions import ObjectNotFound

    from prefect_gpt_image.api import ConfigurationError, GptImageError, RequestValidationError
    from prefect_gpt_image.calls import BudgetExceededError, InputImageError

    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(error, BudgetExceededError):
        return BUDGET
    if isinstance(error, (ConfigurationError, ObjectNotFound)):
        return CONFIGURATION
    if isinstance(error, (UsageError, RequestValidationError, InputImageError)):
        return USAGE
    if isinstance(error, GptImageError):
        return FAILED
    if isinstance(error, (ValueError, FileNotFoundError)):
        return USAGE
    return FAILED
