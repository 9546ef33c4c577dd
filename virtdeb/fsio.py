"""The one writer: read a file's exact bytes and replace it atomically.

Every byte virtdeb writes goes through :func:`atomic_write`: a temporary file
in the same directory, mode and owner of the old file kept (0644 root:root for
new files), fsync, ``os.replace``, fsync of the directory.  virtdeb never
writes through a symlink: the link could lead anywhere.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from virtdeb.errors import ParseError, SystemCommandError, UnsafePathError

NEW_FILE_MODE = 0o644
TEMP_SUFFIX = ".virtdeb-new"  # atomic_write's temporary file: .NAME.virtdeb-new


def read_bytes(real: Path, shown: str) -> bytes | None:
    """The file's bytes, or None if it does not exist.  Refuses symlinks."""
    try:
        # O_NONBLOCK: a FIFO put in place of a config file must not hang virtdeb
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{shown}: is a symlink; virtdeb does not follow links it would write"
                " through: replace it with a regular file or edit the target by hand"
            ) from exc
        raise SystemCommandError(f"{shown}: cannot read: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise UnsafePathError(f"{shown}: is not a regular file; virtdeb leaves it alone")
            return fh.read()
    except OSError as exc:
        raise SystemCommandError(f"{shown}: cannot read: {exc.strerror}") from exc


def decode_utf8(data: bytes, shown: str) -> str:
    """``data`` as text, or a ParseError naming the line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParseError(shown, line, None, "not UTF-8 text") from exc


def check_writable(real: Path, shown: str) -> None:
    """Raise before any write if ``real`` could not be replaced safely."""
    if real.is_symlink():
        raise UnsafePathError(
            f"{shown}: is a symlink; virtdeb does not write through links:"
            " replace it with a regular file or edit the target by hand"
        )
    if real.exists() and not real.is_file():
        raise UnsafePathError(f"{shown}: is not a regular file; virtdeb leaves it alone")
    parent = real.parent
    if parent.is_symlink():
        raise UnsafePathError(f"{shown}: its directory {parent} is a symlink; virtdeb will"
                              " not create files through it")


def make_dirs(real: Path, mode: int = 0o755) -> None:
    """Create ``real`` and its missing parents with exactly ``mode``, whatever the umask."""
    missing = []
    while not real.exists() and not real.is_symlink():
        missing.append(real)
        real = real.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        os.chmod(directory, mode)  # mkdir's mode is masked by the umask


def _unlink_if_there(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sweep_temps(directory: Path) -> list[str]:
    """Remove the temporary files a killed :func:`atomic_write` left in ``directory``.

    Only regular files named ``.NAME.virtdeb-new`` (virtdeb's own); called
    under virtdeb's lock, so no other virtdeb is writing one.  Their names.
    """
    removed = []
    try:
        with os.scandir(directory) as it:
            found = [e for e in it if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)
                     and e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    for entry in found:
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


def atomic_write(real: Path, data: bytes, shown: str, mode: int | None = None, *,
                 exclusive: bool = False) -> None:
    """Replace ``real`` with ``data`` atomically; create parents (0755) as needed.

    ``exclusive``: create ``real`` only if it does not exist (FileExistsError if
    it does), still never visible half-written.
    """
    check_writable(real, shown)
    try:
        old = os.lstat(real)
    except FileNotFoundError:
        old = None
    try:
        make_dirs(real.parent)
        check_writable(real, shown)
        sweep_temps(real.parent)
        tmp = real.parent / f".{real.name}{TEMP_SUFFIX}"
        _unlink_if_there(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if old is not None:
                    os.fchown(fh.fileno(), old.st_uid, old.st_gid)
                    os.fchmod(fh.fileno(), stat.S_IMODE(old.st_mode))
                else:
                    os.fchmod(fh.fileno(), NEW_FILE_MODE if mode is None else mode)
                os.fsync(fh.fileno())
            if exclusive:
                os.link(tmp, real)  # fails if real exists
                os.unlink(tmp)
            else:
                os.replace(tmp, real)
        except BaseException:
            _unlink_if_there(tmp)
            raise
        dfd = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        if exclusive and isinstance(exc, FileExistsError) and exc.filename2 is not None:
            raise  # os.link: real exists
        raise SystemCommandError(f"{shown}: cannot write: {exc.strerror}; nothing was"
                                 " changed in it") from exc


def remove(real: Path, shown: str) -> None:
    """Remove a file virtdeb created (used by revert)."""
    check_writable(real, shown)
    sweep_temps(real.parent)
    try:
        os.unlink(real)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SystemCommandError(f"{shown}: cannot remove: {exc.strerror}") from exc
