"""Files kdlab writes atomically (a temporary file renamed into place) get the mode of any other
file the process writes: ``0o666 & ~umask`` (0644 under umask 022). ``tempfile.mkstemp`` and
``NamedTemporaryFile`` create 0600 files, which a rename would otherwise publish as they are."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Give the temporary file ``tmp`` the ordinary output mode and rename it to ``path`` (atomic on
    one file system: readers see the old file or the new one, never half of one)."""
    os.chmod(tmp, output_mode())
    os.replace(tmp, path)
    return Path(path)
