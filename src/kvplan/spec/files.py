"""Reading the files that specs name: size limits, regular files only, and where they may lie.

CI jobs often check specs that someone else wrote. Such a spec must not make kvplan read
without end (``/dev/zero``, a named pipe, a huge file). It must not make kvplan read a
file outside the project either, because parts of a file can appear in error messages.

The reference rule: when the spec file that kvplan is asked to load lies in a Git work
tree (the nearest folder at or above it that holds ``.git``), every file it names
directly or through other files (``model``, ``workload`` and ``hardware.node`` in a
plan, ``base``, a model's ``config`` and the ``path`` of a lengths file) must lie inside
that work tree after ``..`` and every symbolic link are resolved, or inside a folder
listed in the environment variable ``KVPLAN_SPEC_ROOTS`` (separated by ``os.pathsep``).
A reference outside them is an error at the key that names it, and the file is not
opened, so the error does not reveal whether it exists. A spec outside any Git work
tree may reference any file, because kvplan cannot tell where its project ends.
"""

from __future__ import annotations

import io
import os
import stat

# Specs are a few KB. kvplan's YAML loader reads about 170 KB per second (measured on
# one core of a 2-core x86 machine), so this limit keeps the worst case near 6 seconds.
MAX_SPEC_FILE_BYTES = 1 << 20
# A Hugging Face config.json is a few KB.
MAX_CONFIG_FILE_BYTES = 16 << 20
# Lengths files are request logs, with tens of millions of rows at this size.
MAX_LENGTHS_FILE_BYTES = 256 << 20

ROOTS_VARIABLE = "KVPLAN_SPEC_ROOTS"


class FileTooLargeError(OSError):
    """A file larger than the limit for its kind; its text is not read."""


class NotARegularFileError(OSError):
    """A device, named pipe or socket, which could block or never end when read."""


def check_regular_file(path: str, limit_bytes: int, file_kind: str) -> None:
    """Raise OSError unless ``path`` is a regular file of at most ``limit_bytes`` bytes.

    Raises FileNotFoundError, IsADirectoryError, NotARegularFileError or
    FileTooLargeError. ``file_kind`` names the file in the message, such as "spec file".
    """
    status = os.stat(path)
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(f"{path} is a folder, not a {file_kind}")
    if not stat.S_ISREG(status.st_mode):
        raise NotARegularFileError(
            f"{path} is not a regular file (a device, pipe or socket), so it cannot be a {file_kind}"
        )
    if status.st_size > limit_bytes:
        raise FileTooLargeError(
            f"{path} is {status.st_size:,} bytes, more than the {limit_bytes:,}-byte limit for a {file_kind}"
        )


def read_text(path: str, limit_bytes: int, file_kind: str, *, encoding: str = "utf-8-sig") -> str:
    """Return the text of a regular file of at most ``limit_bytes`` bytes, with newlines as ``open`` reads them.

    Raises the errors of :func:`check_regular_file` and UnicodeDecodeError. The size is
    checked again while reading, for files whose size the file system does not report.
    """
    check_regular_file(path, limit_bytes, file_kind)
    with open(path, "rb") as handle:
        data = handle.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        raise FileTooLargeError(f"{path} is larger than the {limit_bytes:,}-byte limit for a {file_kind}")
    return io.TextIOWrapper(io.BytesIO(data), encoding=encoding).read()


def reference_roots(spec_folder: str) -> tuple[str, ...] | None:
    """Return the real paths of the folders that files referenced from a spec in ``spec_folder`` may lie in.

    Returns None, meaning any folder, when ``spec_folder`` is in no Git work tree.
    """
    work_tree = _work_tree_root(os.path.realpath(spec_folder or os.curdir))
    if work_tree is None:
        return None
    roots = [work_tree]
    for entry in os.environ.get(ROOTS_VARIABLE, "").split(os.pathsep):
        if entry.strip():
            roots.append(os.path.realpath(entry.strip()))
    return tuple(dict.fromkeys(roots))


def reference_problem(path: str, reference: str, roots: tuple[str, ...] | None) -> str | None:
    """Return why the file at ``path`` (written as ``reference``) may not be read, or None when it may.

    ``path`` is the reference joined to the folder of the spec that writes it, and
    ``roots`` comes from :func:`reference_roots`.
    """
    if roots is None:
        return None
    real_path = os.path.realpath(path)
    if any(_is_within(real_path, root) for root in roots):
        return None
    if any(_is_within(os.path.abspath(path), root) for root in roots):
        cause = f"{reference!r} leads through a symbolic link to {real_path}"
    else:
        cause = f"{reference!r} resolves to {real_path}"
    return (
        f"{cause}, outside the folders that specs may reference ({', '.join(roots)}); move the file"
        f" into one of them, or add its folder to {ROOTS_VARIABLE} to allow it"
    )


def _is_within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        # Paths on different Windows drives have no common path.
        return False


def _work_tree_root(folder: str) -> str | None:
    """Return the nearest folder at or above ``folder`` that contains ``.git``, or None."""
    current = folder
    while True:
        if os.path.exists(os.path.join(current, ".git")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
