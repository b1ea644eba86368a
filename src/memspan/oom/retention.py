"""Keep a dump directory within ``max_dumps`` bundles and ``max_total_mb``.

Invariants (lessons from a history-trim job that grew to 20 GB):

- Decisions use names and sizes only: bundles are listed and their files ``stat``-ed,
  never opened or parsed. The sort key (UTC time, pid, sequence) is in the name.
- A directory whose name does not parse as a bundle (``.tmp-`` writes in progress,
  ``.breadcrumbs``, anything a user put there) is never touched.
- The bundle just written is never removed, even when it alone exceeds the size budget.
- Several processes may prune one directory at once: a bundle is claimed by an atomic
  rename to a ``.trash-`` name before it is deleted, and losing that race is not an error.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field

from memspan.oom.bundle import BUNDLE_NAME


@dataclass(frozen=True)
class BundleEntry:
    name: str
    path: str
    size: int
    sort_key: tuple[str, int, int]


@dataclass
class PruneResult:
    removed: list[str] = field(default_factory=list)
    kept: int = 0


def list_bundles(dump_dir: str) -> list[BundleEntry]:
    """Bundles in ``dump_dir``, oldest first (by the time, pid and sequence in the name)."""
    entries = []
    try:
        scan = list(os.scandir(dump_dir))
    except FileNotFoundError:
        return []
    for entry in scan:
        match = BUNDLE_NAME.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        entries.append(BundleEntry(
            entry.name, entry.path, _size(entry.path),
            (match.group(1), int(match.group(4)), int(match.group(5))),
        ))
    entries.sort(key=lambda e: e.sort_key)
    return entries


def _size(path: str) -> int:
    total = 0
    try:
        for item in os.scandir(path):
            try:
                total += item.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    except FileNotFoundError:
        return 0
    return total


def prune(dump_dir: str, *, max_dumps: int, max_total_bytes: int,
          keep: str | None = None) -> PruneResult:
    """Remove the oldest bundles until both limits hold (never ``keep``)."""
    bundles = list_bundles(dump_dir)
    result = PruneResult()
    total = sum(b.size for b in bundles)
    count = len(bundles)
    for bundle in bundles:
        if count <= max_dumps and total <= max_total_bytes:
            break
        if keep is not None and bundle.name == os.path.basename(keep):
            continue
        if _claim_and_delete(dump_dir, bundle):
            result.removed.append(bundle.name)
        count -= 1
        total -= bundle.size
    result.kept = count
    return result


def _claim_and_delete(dump_dir: str, bundle: BundleEntry) -> bool:
    trash = os.path.join(dump_dir, f".trash-{bundle.name}-{secrets.token_hex(4)}")
    try:
        os.rename(bundle.path, trash)
    except (FileNotFoundError, OSError):
        return False  # another process claimed it first
    shutil.rmtree(trash, ignore_errors=True)
    return True
