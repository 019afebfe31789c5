"""A small filesystem of the test's own, to fill to the last byte: a tmpfs with ``size=`` mounted on
a directory (needs root, as CI and this project's machines run; elsewhere ``SmallFsUnavailable``).

A tmpfs answers a full disk with ENOSPC like any other filesystem, needs no loop device or mkfs,
and leaves nothing behind on the host's disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class SmallFsUnavailable(RuntimeError):
    """This process may not mount a filesystem (not root, or no mount in the sandbox)."""


@contextlib.contextmanager
def small_filesystem(path: Path, size_mib: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise SmallFsUnavailable("mounting a small filesystem needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        raise SmallFsUnavailable(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # lazy: a process killed a moment ago may still hold a file open for a few milliseconds
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path, chunk_bytes: int = 1 << 20) -> int:
    """Write ``path`` until the filesystem is full (ENOSPC); return the bytes written."""
    written = 0
    block = b"\0" * chunk_bytes
    with path.open("wb", buffering=0) as fh:
        while chunk_bytes >= 512:
            try:
                written += fh.write(block[:chunk_bytes])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk_bytes //= 2  # the last few blocks: fill the tail too
    return written
