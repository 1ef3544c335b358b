"""The ``prefect-gpt-image`` command: the library's verbs on the command line.

``generate``, ``edit``, ``batch``, ``batch-edit``, ``pipeline`` and ``plan`` (of each) use the
same store, cache records, budget and file layout as the tasks and flows, so a repeated command
is served from the store and costs nothing; ``sandbox`` serves the offline sandbox and ``demo``
runs the demo. One module per verb; :mod:`.app` builds the parser and maps errors to the exit
codes of :mod:`.exits`. Heavy imports (Prefect, boto3) happen inside the verbs, so ``--help``,
``--version`` and the sandbox start fast.
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
