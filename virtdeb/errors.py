"""The one exception family of virtdeb: a message for a person and an exit code.

Entry points (cli, maint, apthook) catch :class:`VirtdebError` and print its
message on one line; nothing else catches it.
"""

from __future__ import annotations


class VirtdebError(Exception):
    """Base of every error virtdeb reports to a person."""

    name = "virtdeb-error"
    label = "error"  # the word after "virtdeb:" when an entry point prints it
    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(VirtdebError):
    """Bad command line or configuration value."""

    name = "usage"


class ParseError(VirtdebError):
    """A file could not be parsed; nothing was written."""

    name = "parse"

    def __init__(self, path: str, line: int | None, column: int | None, reason: str,
                 hint: str = "fix the file, or restore it from its package, and run again") -> None:
        where = path
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {reason}; {hint}")
        self.path = path
        self.line = line
        self.column = column


class UnsafePathError(VirtdebError):
    """virtdeb refused to write through a symlink or outside the root."""

    name = "unsafe-path"


class SystemCommandError(VirtdebError):
    """An external command or system call failed."""

    name = "system"
    exit_code = 1


class LibvirtError(VirtdebError):
    """libvirt refused or could not be reached."""

    name = "libvirt"
    exit_code = 1
