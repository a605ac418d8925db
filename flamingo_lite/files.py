"""Writing files so that nothing is lost, and reading back the model files the project writes.

Every file the project writes (the training history, benchmark records, tables, pictures, model files) goes through
`write_text_atomic` / `write_bytes_atomic`: the bytes go to a temporary file in the same folder, are flushed to
disk, and the temporary file is then renamed over the target (`os.replace`, atomic on POSIX and Windows). When
anything fails on the way (disk full, quota, an interrupt), the temporary file is removed and the old file is
left as it was. `check_output_path` finds a target that cannot be written before any work is done.

`RunOutputs` writes the outputs of a finished run one by one: a write that fails is reported on the standard error
and the others are still written; a text output that could not be written is printed on the standard output
instead, so the run is not lost; the command then exits with `NOT_WRITTEN` (3).

`load_model_file` reads every model file the project writes (`torch.save`d dicts of tensors and plain values) with
`torch.load(weights_only=True)`: a file that is not one (empty, truncated, corrupted, another program's) is a
`ValueError` naming the path and what was expected, never a hint to switch that protection off.
"""
from __future__ import annotations

import io
import os
import pickle
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "NOT_WRITTEN", "RunOutputs", "check_output_path", "figure_bytes", "load_model_file", "model_file_bytes",
    "model_file_error", "write_bytes_atomic", "write_figure_atomic", "write_text_atomic",
]

NOT_WRITTEN = 3  # the exit status of a run that finished but could not write some of its outputs (1: it failed; 2: usage)


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
    return write_bytes_atomic(path, figure_bytes(fig, path, **savefig_kwargs))


def figure_bytes(fig, path: str | os.PathLike, **savefig_kwargs) -> bytes:
    """A matplotlib figure drawn into memory, in the format of `path`'s suffix (png unless told)."""
    savefig_kwargs.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    picture = io.BytesIO()
    fig.savefig(picture, **savefig_kwargs)
    return picture.getvalue()


class RunOutputs:
    """The outputs of a finished run, written one by one (each atomically, its folders made): one that fails is
    reported and the rest are still written. `exit_code()` is 0, or `NOT_WRITTEN` after naming what was not written.

        outputs = RunOutputs()
        outputs.write("--save-model", model_path, model_bytes)  # bytes: reported if it fails
        outputs.write("--out", history_path, json_text)  # text: printed on the standard output if it fails
        return outputs.exit_code()
    """

    def __init__(self):
        self.failed: list[str] = []  # "--out history.json", ... in the order they failed

    def write(self, what: str, path: str | os.PathLike, data: str | bytes) -> bool:
        """Write `data` to `path`; on failure say so on the standard error (text: then print it) and return False."""
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data.encode("utf-8") if isinstance(data, str) else data)
            return True
        except OSError as err:
            self.failed.append(f"{what} {path}")
            kept = "it follows on the standard output, so it is not lost" if isinstance(data, str) else "it is lost"
            print(f"error: could not write {what} {path} ({err.__class__.__name__}: {err}); an earlier file there is "
                  f"unchanged, and {kept}.", file=sys.stderr, flush=True)
            if isinstance(data, str):
                print(data, flush=True)
            return False

    def exit_code(self) -> int:
        if not self.failed:
            return 0
        print(f"error: not written: {'; '.join(self.failed)} (exit status {NOT_WRITTEN})", file=sys.stderr, flush=True)
        return NOT_WRITTEN


def model_file_bytes(contents: dict) -> bytes:
    """`torch.save(contents)` into memory: the bytes of a model file, for `write_bytes_atomic` or `RunOutputs`."""
    import torch  # here, not at the top: the writers above need only the standard library

    buffer = io.BytesIO()
    torch.save(contents, buffer)
    return buffer.getvalue()


def model_file_error(path, what: str, problem: str) -> ValueError:
    """The one message for a file that is not the model file expected: the path, what it should be, what is wrong."""
    return ValueError(f"{str(path)!r} is not {what}: {problem}")


def load_model_file(path: str | os.PathLike, what: str, *, keys=()) -> dict:
    """The dict a project command saved at `path`, read with `torch.load(weights_only=True)` onto the CPU.

    `what` says what the file should be ("a vision-encoder file written by python -m flamingo_lite.tiny.contrastive"),
    `keys` the entries it must hold. A missing file is a FileNotFoundError; anything else that is not such a file
    (empty, truncated, corrupted, another program's, a dict without the keys) is a ValueError naming the path and
    what was expected. The file is never unpickled with weights_only=False: that would run any code inside it.
    """
    import torch  # here, not at the top: the writers above need only the standard library

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no file at {str(path)!r}: expected {what}")
    if not path.is_file():
        raise model_file_error(path, what, "it is a folder or a device, not a file")
    if path.stat().st_size == 0:
        raise model_file_error(path, what, "the file is empty")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive, whose directory sits at the end
        raise model_file_error(path, what, "it is not a file torch.save wrote (no zip archive): truncated, or another kind of file")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, EOF, unpickling errors: the messages of torch's reader are not for this reader
        if isinstance(err, pickle.UnpicklingError):  # weights_only refused an object: the file was made elsewhere
            problem = "it holds objects other than tensors and plain values (a file made by another program?)"
        else:
            problem = f"torch.load cannot read it ({err.__class__.__name__}): it is corrupted"
        raise model_file_error(path, what, problem) from None
    if not isinstance(contents, dict):
        raise model_file_error(path, what, f"it holds a {type(contents).__name__}, not a dict")
    missing = [key for key in keys if key not in contents]
    if missing:
        raise model_file_error(path, what, f"it has no {', '.join(map(repr, missing))} (it holds {sorted(map(str, contents))[:8]})")
    return contents


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
