"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

The text goes to a temporary file in the target's folder, which is flushed to disk and
then renamed over the target with :func:`os.replace`. POSIX file systems rename a file
within one file system atomically. So an interrupted run (an exception, Ctrl-C, a full
disk) leaves an existing target untouched and removes the temporary file. A process
killed outright (SIGKILL, power loss) can leave the temporary file, named
``.NAME.*.tmp`` next to the target, but never a truncated target.
"""

from __future__ import annotations

import errno
import os
import tempfile

PathLike = str | os.PathLike[str]


def write_text_atomic(path: PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` so that the file is replaced only once it is complete.

    The new file gets the permissions a plain ``open(path, "w")`` would give it: those
    of the file it replaces, or 0o666 minus the umask for a new file. A symbolic link at
    ``path`` is replaced by a regular file rather than followed. Raises OSError (and
    UnicodeEncodeError for text the encoding cannot represent) with the target
    unchanged.
    """
    write_bytes_atomic(path, text.encode(encoding))


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` like :func:`write_text_atomic`, for binary files such as PNG."""
    target = os.fspath(path)
    folder = os.path.dirname(target) or os.curdir
    mode = _mode_for(target)
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder
        )
    except OSError as error:
        # The error names the temporary file, a name the caller never gave.
        raise type(error)(error.errno, error.strerror, target) from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        # BaseException, so that Ctrl-C during the write also removes the partial file.
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def check_output_folder(path: PathLike) -> None:
    """Raise OSError unless the folder of ``path`` exists and is writable.

    For commands that work for a long time before they write: they call this first, so
    that a mistyped ``--output`` fails at once.
    """
    folder = os.path.dirname(os.fspath(path)) or os.curdir
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"folder {folder} does not exist", os.fspath(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"folder {folder} is not writable", os.fspath(path))


def _mode_for(target: str) -> int:
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        # NOTE: os.umask can only be read by setting it, so another thread that creates
        # a file between these two calls gets umask 0.
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
