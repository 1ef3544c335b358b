"""What a run may read: which hosts its input URLs may reach, which folders its local paths may
name, which buckets its ``s3://`` URIs may name.

Inputs (images, masks, manifests, folders to walk) are named by a run's parameters, so by whoever
can start a run (from the Prefect UI, for a deployment). The policy bounds what such a run can
make the worker read and send on to the API:

* URL hosts: public addresses only, unless named in ``private_hosts`` (see
  :mod:`.netpolicy`; ``$GPT_IMAGE_ALLOW_PRIVATE_HOSTS``);
* local paths and ``file://`` URIs: anywhere the process can read by default (a script reads its
  own files), or only inside ``roots`` when set (``$GPT_IMAGE_INPUT_ROOTS``; the shipped
  deployments set it), after symlinks and ``..`` are resolved;
* ``s3://`` URIs: the store's own bucket, plus ``buckets`` (``$GPT_IMAGE_INPUT_BUCKETS``; ``*``
  means any bucket the worker's credentials can read).

Each environment variable, when set (comma-separated), replaces the settings block's value: the
worker's environment, set by whoever runs the worker, has the last word over a block anyone with
UI access may edit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GptImageError
from .netpolicy import ALLOW_PRIVATE_HOSTS_ENV, HostPolicy

__all__ = [
    "ALLOW_PRIVATE_HOSTS_ENV",
    "INPUT_BUCKETS_ENV",
    "INPUT_ROOTS_ENV",
    "InputPolicy",
    "RefusedInputError",
]

INPUT_ROOTS_ENV = "GPT_IMAGE_INPUT_ROOTS"
"""Environment variable: comma-separated folders local inputs must be inside."""
INPUT_BUCKETS_ENV = "GPT_IMAGE_INPUT_BUCKETS"
"""Environment variable: comma-separated buckets ``s3://`` inputs may name besides the store's
(``*``: any)."""


class RefusedInputError(GptImageError, ValueError):
    """A local path or bucket outside what the policy allows; nothing was read."""


def _listed(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class InputPolicy:
    """The resolved policy: ``roots`` None means any local path; ``buckets`` None means any bucket."""

    hosts: HostPolicy = field(default_factory=HostPolicy)
    roots: tuple[Path, ...] | None = None
    buckets: frozenset[str] | None = frozenset()

    @classmethod
    def build(
        cls,
        *,
        private_hosts: Iterable[str] = (),
        roots: Iterable[str] | None = None,
        buckets: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> InputPolicy:
        """The policy of these values, each replaced by its environment variable when that is set
        (non-empty)."""
        env = os.environ if environ is None else environ
        hosts_env = env.get(ALLOW_PRIVATE_HOSTS_ENV, "").strip()
        roots_env = env.get(INPUT_ROOTS_ENV, "").strip()
        buckets_env = env.get(INPUT_BUCKETS_ENV, "").strip()
        host_list = _listed(hosts_env) if hosts_env else list(private_hosts)
        root_list = _listed(roots_env) if roots_env else (None if roots is None else list(roots))
        bucket_list = _listed(buckets_env) if buckets_env else list(buckets)
        return cls(
            hosts=HostPolicy.parse(host_list),
            roots=None if root_list is None else tuple(Path(r).expanduser().resolve() for r in root_list),
            buckets=None if "*" in bucket_list else frozenset(bucket_list),
        )

    def check_path(self, path: Path, *, also: Path | None = None) -> Path:
        """``path`` with symlinks and ``..`` resolved, inside one of the roots (or ``also``, e.g.
        the store's own folder); RefusedInputError when it is not."""
        resolved = path.expanduser().resolve()
        if self.roots is None:
            return resolved
        allowed = [*self.roots, *([also.resolve()] if also is not None else [])]
        if any(resolved.is_relative_to(root) for root in allowed):
            return resolved
        named = ", ".join(str(root) for root in self.roots) or "none"
        raise RefusedInputError(
            f"{str(path)!r} is outside the folders inputs may be read from ({named}; setting "
            f"input_roots or ${INPUT_ROOTS_ENV})"
        )

    def check_bucket(self, bucket: str, *, store_bucket: str | None) -> None:
        """Refuse ``bucket`` unless it is the store's or an allowed one."""
        if self.buckets is None or bucket == store_bucket or bucket in self.buckets:
            return
        allowed = sorted({*self.buckets, *([store_bucket] if store_bucket else [])})
        raise RefusedInputError(
            f"bucket {bucket!r} is not one inputs may be read from ({', '.join(allowed) or 'none'}; "
            f"setting input_buckets or ${INPUT_BUCKETS_ENV})"
        )
