"""``atomic_write``: a file is replaced whole or not at all.

The data goes to a temporary file in the same folder, which ``os.replace`` then renames over the target:
a reader (another pytest-xdist worker, a browser, git) sees the old file or the new one, never half of
either, and an interrupted write leaves the old one. Used for baselines, the report's files and the
coordinate check's figure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` all at once, readable by all (mkstemp's files are private).

    ``durable``: also fsync the file and its folder, so the new file survives a crash right after
    (committed baselines; a figure or report page can be drawn again).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


__all__ = ["atomic_write"]
