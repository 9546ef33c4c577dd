"""The Host: everything a rule may ask about the machine, rooted at ``root``.

A test points a Host at a fake root in a scratch directory; ``--root DIR``
does the same for real.  Nothing in virtdeb touches the system except through
a Host.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtdeb import dpkgstatus, fsio
from virtdeb.errors import LibvirtError, SystemCommandError, UnsafePathError

if TYPE_CHECKING:
    from virtdeb.config import Config

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
DPKG_STATUS = "/var/lib/dpkg/status"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The sockets qemu:///system connects to (libvirtd's or, split, virtqemud's); with socket
# activation they exist while the daemon does not run yet.
SYSTEM_SOCKETS = ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock")


def system_daemon() -> bool:
    """Whether a daemon (or its activation socket) answers qemu:///system here."""
    return any(os.path.exists(sock) for sock in SYSTEM_SOCKETS)


@dataclass
class Host:
    """The machine virtdeb looks at and changes.

    ``root`` is the directory every absolute path is taken under.  ``uri`` is
    the libvirt connection URI.  ``netns`` names a network namespace whose
    addresses and routes count as the host's (used by tests).
    """

    root: Path = Path("/")
    uri: str = DEFAULT_URI
    netns: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self._conn: Any = None
        self._conn_error: LibvirtError | None = None
        self._packages: dict[str, dict[str, str]] = {}
        # started early (start): argv -> (its environment, the process or why it failed)
        self._started: dict[tuple[str, ...],
                            tuple[dict[str, str], subprocess.Popen[str] | OSError]] = {}

    # -- paths ---------------------------------------------------------------
    @property
    def is_live(self) -> bool:
        """True when the root is the running system's ``/``."""
        return self.root == Path("/")

    def path(self, abspath: str) -> Path:
        """The real location of ``abspath`` (an absolute path on the host)."""
        if not abspath.startswith("/"):
            raise ValueError(f"not an absolute path: {abspath!r}")
        return self.root / abspath.lstrip("/")

    def inside(self, real: Path) -> bool:
        """Whether ``real`` (resolved) lies inside the root."""
        try:
            Path(os.path.realpath(real)).relative_to(self.root)
        except ValueError:
            return False
        return True

    def check_parent(self, abspath: str) -> Path:
        """The real path for writing ``abspath``; refuse a parent that leaves the root."""
        real = self.path(abspath)
        parent = real.parent
        if parent.exists() and not self.inside(parent):
            raise UnsafePathError(
                f"{abspath}: its directory leads outside {self.root} through a symlink;"
                " virtdeb will not write there"
            )
        return real

    @property
    def state_dir(self) -> Path:
        return self.path("/var/lib/virtdeb")

    @property
    def config_path(self) -> Path:
        return self.path("/etc/virtdeb/virtdeb.conf")

    # -- configuration -------------------------------------------------------
    @cached_property
    def config(self) -> Config:
        from virtdeb.config import Config

        return Config.load(self.config_path, self.overrides)

    # -- dpkg ----------------------------------------------------------------
    @cached_property
    def _dpkg_status(self) -> bytes:
        """dpkg's status file (b"" when there is none), read once."""
        return fsio.read_bytes(self.path(DPKG_STATUS), DPKG_STATUS) or b""

    def _package(self, package: str) -> dict[str, str]:
        """The fields of ``package``'s paragraph in dpkg's status file ({} if none).

        Only that paragraph is found and parsed (dpkgstatus): a real status file has a
        thousand and a rule asks about a few.
        """
        if package in self._packages:
            return self._packages[package]
        data = self._dpkg_status
        span = dpkgstatus.paragraph(data, package)
        fields = {} if span is None else dpkgstatus.fields(
            data, span, DPKG_STATUS, "dpkg's database looks damaged: see dpkg --audit")
        self._packages[package] = fields
        return fields

    def installed(self, package: str) -> bool:
        """Whether dpkg has ``package`` installed (unpacked and configured counts)."""
        status = self._package(package).get("Status", "").split()
        return len(status) == 3 and status[2] in ("installed", "triggers-pending",
                                                   "triggers-awaited", "half-configured",
                                                   "unpacked")

    def version(self, package: str) -> str | None:
        """The installed version of ``package``, or None."""
        if not self.installed(package):
            return None
        return self._package(package).get("Version")

    # -- commands ------------------------------------------------------------
    @staticmethod
    def _env() -> dict[str, str]:
        from virtdeb.lock import child_env

        # a trigger of a dpkg run from here goes on under this process's lock
        return {"PATH": CLEAN_PATH, "LC_ALL": "C.UTF-8", **child_env()}

    def start(self, argv: Sequence[str]) -> None:
        """Start the read-only command ``argv`` now: the next :meth:`run` of the same
        argv (without input, in the same environment) waits for it and takes its result
        instead of starting it then.  doctor starts the commands its checks will run
        before it runs them, so that they run while it reads and parses files."""
        key = tuple(argv)
        if key in self._started:
            return
        env = self._env()
        log.debug("starting %s", " ".join(argv))
        try:
            proc: subprocess.Popen[str] | OSError = subprocess.Popen(
                list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=env)
        except OSError as exc:
            proc = exc
        self._started[key] = (env, proc)

    def _take(self, argv: Sequence[str], env: dict[str, str],
              input: str | None) -> subprocess.CompletedProcess[str] | None:
        """The result of ``argv`` started early, or None (not started, or not alike)."""
        started = self._started.pop(tuple(argv), None)
        if started is None:
            return None
        early_env, proc = started
        if input is not None or early_env != env:
            _stop(proc)
            return None
        if isinstance(proc, OSError):
            raise proc
        stdout, stderr = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def run(self, argv: Sequence[str], *, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command (never through a shell) with a clean PATH and C locale."""
        env = self._env()
        log.debug("running %s", " ".join(argv))
        try:
            proc = self._take(argv, env, input) or subprocess.run(
                list(argv), capture_output=True, text=True, env=env, input=input,
                check=False)
        except OSError as exc:
            raise SystemCommandError(f"{argv[0]}: {exc.strerror}; is it installed?") from exc
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise SystemCommandError(
                f"{' '.join(argv)} failed ({proc.returncode}): "
                f"{detail[-1] if detail else 'no output'}"
            )
        return proc

    # -- libvirt -------------------------------------------------------------
    def connect(self) -> Any:
        """One libvirt connection for the Host's lifetime (read-write).

        A failure is remembered: every rule asking again gets the same error at once.
        """
        if self._conn_error is not None:
            raise self._conn_error
        if self._conn is None and self.uri == DEFAULT_URI and not system_daemon():
            # what libvirt would say, without its import (doctor on a host at rest)
            self._conn_error = LibvirtError(
                f"cannot connect to {self.uri}: no {SYSTEM_SOCKETS[0]};"
                " is libvirtd running? (--connect URI picks another)")
            raise self._conn_error
        if self._conn is None:
            import libvirt

            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                self._conn_error = LibvirtError(
                    f"cannot connect to {self.uri}: {exc.get_error_message()};"
                    " is libvirtd running? (--connect URI picks another)"
                )
                raise self._conn_error from exc
        return self._conn

    def close(self) -> None:
        while self._started:  # started and never asked for
            _stop(self._started.popitem()[1][1])
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _stop(proc: subprocess.Popen[str] | OSError) -> None:
    """End a command started early whose result nobody takes."""
    if isinstance(proc, subprocess.Popen):
        proc.kill()
        proc.communicate()
