"""Writing files so that nothing is lost: a reader sees the old content or the new, never half of either.

Every file the project writes (the training history, benchmark records, tables, pictures) goes through
`write_text_atomic` / `write_bytes_atomic`: the bytes go to a temporary file in the same folder, are flushed to
disk, and the temporary file is then renamed over the target (`os.replace`, atomic on POSIX and Windows). When
anything fails on the way (disk full, quota, an interrupt), the temporary file is removed and the old file is
left as it was. `check_output_path` finds a target that cannot be written before any work is done.
"""
from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["check_output_path", "write_bytes_atomic", "write_figure_atomic", "write_text_atomic"]


def _default_mode() -> int:
    """The permissions a plain `open(path, "w")` would give a new file (0o666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _is_stream(path: Path) -> bool:
    """An existing device or pipe (/dev/stdout, /dev/null, a FIFO): it holds no old content and cannot be renamed over."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; the folder must exist. Returns the path written.

    A symbolic link is followed (the file it points to is replaced, as `Path.write_bytes` would write it), an
    existing file keeps its permissions, and a device or pipe is written directly.
    """
    path = Path(path)
    if _is_stream(path):
        with open(path, "wb") as stream:
            stream.write(data)
        return path
    target = Path(os.path.realpath(path))
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = _default_mode()
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it visible
        os.chmod(temporary, mode)  # mkstemp makes it private (0o600)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `write_bytes_atomic`). Returns the path written."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_figure_atomic(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib figure to `path` atomically: drawn into memory, then written by `write_bytes_atomic`.

    The format is the file's suffix (png unless told); `savefig_kwargs` go to `fig.savefig` as they are.
    """
    savefig_kwargs.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    picture = io.BytesIO()
    fig.savefig(picture, **savefig_kwargs)
    return write_bytes_atomic(path, picture.getvalue())


def check_output_path(path: str | os.PathLike, what: str = "the output file") -> Path:
    """`path` as a Path if a file can be written there (its missing parent folders may be created), else ValueError.

    Refused, with a message that says why: an empty name, an existing folder, a path below a file, a folder this
    user may not write into. Nothing is created.
    """
    if str(path).strip() == "":
        raise ValueError(f"{what} is empty: give a file name such as history.json")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder: give a file name, such as {str(path / 'history.json')!r}")
    if _is_stream(path):
        return path
    folder = path.absolute().parent
    while not folder.exists():  # the nearest folder that exists; the ones below it would be created
        if folder.is_symlink():
            raise ValueError(f"{what} {str(path)!r} cannot be written: {str(folder)!r} is a broken link")
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{what} {str(path)!r} cannot be written: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} cannot be written: no permission to write into {str(folder)!r}")
    return path
