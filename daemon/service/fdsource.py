"""Bundles and firmware images that reach ferryd as open file descriptors.

ferryd runs as root; a member of group ``ferry`` must not get it to read a file they
could not read themselves. So ``ferry install ./bundle.swu`` opens the file with the
caller's own rights and passes the descriptor over D-Bus (``InstallFd``, ``Flash``);
ferryd never opens a path a caller names.

What ferryd accepts is a descriptor open *for reading* on a *regular file*. Both checks
matter because ferryd reads it through ``/proc/self/fd/N`` (the install pipeline takes a
source it can open, and a fresh open gives ferryd its own offset, so the client cannot
move it): re-opening an ``O_PATH`` descriptor, which needs no read permission to get, or
a write-only one would read with root's rights. A FIFO or socket could stall the install
forever, and a device is never a bundle.

A descriptor lives only as long as the ferryd that received it: a deployment that was
reading one when ferryd stopped cannot continue after the restart
(:func:`fail_unresumable`), and the operator runs ``ferry install`` again.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import TYPE_CHECKING

from ferry.errors import FerryError

if TYPE_CHECKING:
    from ferry.daemon.install.context import Context

# How a descriptor-backed source is written in the journal; no later process can
# open it as the same file (its fd table is another), which is why such a deployment
# is never resumed.
FD_PREFIX = "/proc/self/fd/"


class BadDescriptor(FerryError):
    pass


def take(fd: int | None, what: str) -> int:
    """A private, close-on-exec copy of a received descriptor, once it passed the checks.

    The caller owns the copy (close it when the operation ends); the original stays
    with the D-Bus message, which ferryd closes after the call whatever happened.
    """
    if fd is None:
        raise BadDescriptor(f"no file descriptor arrived with the {what}: the client must "
                            "pass it as a UNIX fd (negotiate fd passing on its bus "
                            "connection)")
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        st = os.fstat(fd)
    except OSError as err:
        raise BadDescriptor(f"the {what}'s file descriptor is not usable: "
                            f"{err.strerror}") from err
    if flags & getattr(os, "O_PATH", 0) or (flags & os.O_ACCMODE) == os.O_WRONLY:
        raise BadDescriptor(f"the {what}'s file descriptor is not open for reading; "
                            "open the file read-only and pass that")
    if not stat.S_ISREG(st.st_mode):
        raise BadDescriptor(f"the {what} must be a regular file, not a "
                            f"{_kind(st.st_mode)}")
    return os.dup(fd)  # os.dup's copy is non-inheritable (close-on-exec)


def path(fd: int) -> str:
    """The name under which ferryd (this process only) opens ``fd`` afresh."""
    return f"{FD_PREFIX}{fd}"


def is_fd_source(source: str) -> bool:
    return source.startswith(FD_PREFIX) or source.startswith("/dev/fd/")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "pipe"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


UNRESUMABLE = ("the bundle came from a file descriptor that 'ferry install' passed to "
               "ferryd, and ferryd stopped before the slot switch; a descriptor does not "
               "survive that: run 'ferry install' again")


def fail_unresumable(ctx: Context) -> int | None:
    """Fail the pending deployment if it still needs a descriptor it can no longer have.

    Called before any resume (ferryd at start, ``ferry install --resume``). Only the
    steps before the slot switch read the bundle; a deployment past them (activating,
    rebooting, the boot check, the proxy phase) resumes as any other. Returns the id of
    the deployment it failed.
    """
    from ferry.daemon.install.pipeline import PRE_ACTIVATION, fail

    dep = ctx.journal.pending()
    if dep is None or not is_fd_source(dep.source) or dep.state not in PRE_ACTIVATION:
        return None
    fail(ctx, dep.id, BadDescriptor(UNRESUMABLE))
    return dep.id
