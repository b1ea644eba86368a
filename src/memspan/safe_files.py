"""Creating, reading back and deleting files in directories memspan does not solely control.

A dump directory can be shared (``/tmp/oom_dumps``, a team volume) and anybody who can write
into it can plant symlinks, FIFOs or directories of their own. The rules, used by the
breadcrumb writer, the launcher, bundle writing and the report sidecar:

- Directories memspan creates are created ``0700``. A directory whose *name memspan chose*
  (``.breadcrumbs`` inside a dump directory) must be a real directory, not a symlink, owned
  by the current user: otherwise :class:`UnsafePathError` (an ``OSError``) is raised and the
  caller warns and counts. A directory the user named (the dump directory itself) may be a
  symlink the user made (owned by the current user or root); a symlink owned by anybody else
  is refused.
- Work inside a checked directory goes through a directory descriptor opened with
  ``O_NOFOLLOW``, so swapping the directory for a symlink after the check changes nothing.
- Files are written to an exclusive temporary (``O_CREAT|O_EXCL|O_NOFOLLOW``, a random name
  in the target directory) and renamed into place: a planted symlink is replaced, never
  followed. Writes loop on short writes.
- Files read back are opened with ``O_NOFOLLOW|O_NONBLOCK``, must be regular files (a FIFO,
  device or symlink is refused without blocking) and are read with a size bound.
- Deletion is ``unlink`` relative to a checked directory descriptor: a symlink is removed
  itself, its target never.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class UnsafePathError(OSError):
    """A path memspan refuses to use: a symlink, not a directory, or somebody else's."""


@dataclass(frozen=True)
class BoundedRead:
    """What :func:`read_regular_file` returned: the bytes, and the file's size on disk."""

    data: bytes
    size: int

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)


def _owner_ok(uid: int, *, allow_root: bool) -> bool:
    return uid == os.geteuid() or (allow_root and uid == 0)


def ensure_directory(path: str, *, own_name: bool) -> None:
    """Make sure ``path`` is a directory memspan may write into, creating it ``0700``.

    ``own_name``: memspan chose the name (``.breadcrumbs``), so it must be a real directory
    owned by the current user. Otherwise (a directory the user configured) it may be a
    symlink owned by the current user or root that leads to a directory. Missing parents are
    created ``0700`` too. Raises :class:`UnsafePathError` naming the path and what is wrong,
    or the ``OSError`` of a failed ``mkdir``.
    """
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
        return
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if parent and parent != os.path.abspath(path):
            ensure_directory(parent, own_name=False)
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
            return
        except FileExistsError:
            pass
    except FileExistsError:
        pass
    check_directory(path, own_name=own_name)


def check_directory(path: str, *, own_name: bool) -> None:
    """Raise :class:`UnsafePathError` unless ``path`` is usable (see :func:`ensure_directory`)."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        if own_name:
            raise UnsafePathError(errno.ELOOP, "is a symlink (refused: memspan never follows a "
                                  "symlink in place of a directory it names itself)", path)
        if not _owner_ok(info.st_uid, allow_root=True):
            raise UnsafePathError(errno.EPERM, f"is a symlink owned by uid {info.st_uid}, not "
                                  "by the current user (refused)", path)
        info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(errno.ENOTDIR, "exists and is not a directory", path)
    if own_name and not _owner_ok(info.st_uid, allow_root=False):
        raise UnsafePathError(errno.EPERM, f"is owned by uid {info.st_uid}, not by the current "
                              f"user (uid {os.geteuid()}): refused", path)


def open_directory(path: str, *, own_name: bool) -> int:
    """A descriptor of the checked directory ``path`` (created ``0700`` when missing).

    The descriptor is opened with ``O_NOFOLLOW`` and checked again with ``fstat``, so what
    it refers to is the directory that passed the checks.
    """
    ensure_directory(path, own_name=own_name)
    flags = _DIR_FLAGS if own_name else (_DIR_FLAGS & ~os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if own_name and not _owner_ok(info.st_uid, allow_root=False):
            raise UnsafePathError(errno.EPERM, "changed owner while being opened", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]


def replace_file(name: str, data: bytes, *, dir_fd: int | None = None,
                 mode: int = PRIVATE_FILE_MODE) -> None:
    """Atomically make ``name`` hold ``data``: exclusive temporary in the same directory, then
    ``rename``. A symlink at ``name`` is replaced, not followed. ``name`` is relative to
    ``dir_fd`` when given."""
    directory, base = os.path.split(name) if dir_fd is None else ("", name)
    temporary = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def read_regular_file(name: str, max_bytes: int, *, dir_fd: int | None = None,
                      tail: bool = False) -> BoundedRead:
    """At most ``max_bytes`` of the regular file ``name`` (the head, or the tail if ``tail``).

    Refuses (``UnsafePathError``) a symlink, FIFO, socket, device or directory without
    blocking on it. The size on disk comes back so the caller can count a truncation.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafePathError(errno.ELOOP, "is a symlink (refused)", name) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(errno.EINVAL, "is not a regular file (refused)", name)
        if tail and info.st_size > max_bytes:
            os.lseek(fd, info.st_size - max_bytes, os.SEEK_SET)
        chunks: list[bytes] = []
        left = max_bytes
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return BoundedRead(b"".join(chunks), max(info.st_size, max_bytes - left))
    finally:
        os.close(fd)


def unlink_in(dir_fd: int, name: str) -> bool:
    """Remove ``name`` (a plain name, no ``/``) from the directory ``dir_fd``; False if gone."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
