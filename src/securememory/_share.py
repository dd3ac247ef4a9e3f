"""Layer 4: secrets across processes on purpose (``send``/``receive`` and ``multiprocessing``).

A secret made with ``inheritable=True`` is *shareable*: its pages are a file, ``memfd_secret``
for secretmem, a sealed ``memfd`` for guarded and protected, and its descriptor (close-on-exec)
can be handed to another process:

- over a connected ``AF_UNIX`` socket with :func:`send` and :func:`receive` (``SCM_RIGHTS``);
- by ``multiprocessing`` (every start method; ``Process`` arguments, ``Pool`` and
  ``ProcessPoolExecutor`` tasks and results, queues): this module registers a reducer with
  ``multiprocessing.reduction.ForkingPickler`` that passes the descriptor with multiprocessing's
  own ``DupFd``. Plain ``pickle.dumps(secret)`` still raises ``TypeError``;
- by ``os.fork()``: the child of an inheritable secret maps and locks its own view at its first
  use of it (this is what ``gunicorn --preload`` and Celery-style prefork pools do).

The receiver gets a :class:`~securememory.Secret` over the *same pages*: no byte of the secret
crosses a pipe, a socket buffer or a heap. Semantics:

- **Who wipes.** The creator. Closing a secret in a process that did not create it only unmaps
  that process's view. The creator's ``close()`` (or its wipe at interpreter exit) first clears
  the live marker in the pages, then wipes them, for every process; an access that begins after
  that in another process raises :class:`~securememory.SecretClosedError` (never reads zeros).
  Not guaranteed: an access already running in another process while the creator wipes reads
  the bytes being wiped; ``close()`` waits only for this process's accesses.
- **Memlock.** Each process that maps the pages locks its own view and pays for it against its
  own ``RLIMIT_MEMLOCK`` (the inner pages: ``stats().bytes_locked`` of that process); the
  physical pages exist once.
- **Creator gone.** If the creator exits normally its exit wipe wipes for everyone, as its
  ``close()`` would. If it is killed (``SIGKILL``) nothing wipes: the pages live on, locked,
  while any process maps them or holds the descriptor, and the last one to let go frees them
  (the kernel zeroes freed pages).
- **Where memfd_secret is missing** (guarded, protected), the pages are a sealed ``memfd``,
  locked, undumpable and no-access when idle in each process, but readable by root or a
  debugger through ``/proc/<pid>/mem``, like any guarded or protected secret.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from typing import Any, Callable

from . import _implementations
from ._secret import Secret, adopt
from .errors import SecureMemoryError

__all__ = ["receive", "send"]

_MAGIC = b"SMSHARE1"
_HEAD = struct.Struct("=8sB15sQ")  # magic, flags, implementation name, size: 32 bytes
_INHERITABLE = 1
_MAX_FDS = 8  # room for a few: a peer that sends more has all of them closed, not leaked
_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


def _check_socket(sock: object) -> socket.socket:
    if not isinstance(sock, socket.socket):
        raise TypeError(f"expected a connected AF_UNIX socket, not {type(sock).__name__}")
    family = getattr(socket, "AF_UNIX", None)
    if family is None or sock.family != family:
        raise ValueError(
            f"a secret's descriptor can pass only over an AF_UNIX socket, not {sock.family!r}"
        )
    return sock


def _header(secret: Secret) -> bytes:
    name = secret.implementation.encode()
    flags = _INHERITABLE if secret._inheritable else 0
    return _HEAD.pack(_MAGIC, flags, name, len(secret))


def send(sock: socket.socket, secret: Secret) -> None:
    """Hand ``secret`` to the process at the other end of the connected ``AF_UNIX`` socket
    ``sock``, which gets it with :func:`receive`.

    What crosses the socket is the secret's descriptor (``SCM_RIGHTS``) and a 32-byte header
    (implementation and size), never its bytes. ``secret`` must be shareable: made with
    ``inheritable=True``, or itself received from another process; otherwise
    :class:`~securememory.SecureMemoryError` says so (a private secret's pages are anonymous
    memory no other process can map). The secret stays open here; the creator's close wipes it
    for every process. Raises ``TypeError``/``ValueError`` for a socket that is not
    ``AF_UNIX``, :class:`~securememory.SecretClosedError` for a closed secret, ``OSError`` if the
    send fails.
    """
    sock = _check_socket(sock)
    if not isinstance(secret, Secret):
        raise TypeError(f"expected a Secret, not {type(secret).__name__}")
    fd = secret._dup_fd()  # checked under the GIL: a concurrent close() cannot swap it
    try:
        data = _header(secret)
        fds = array.array("i", [fd])
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        if sent < len(data):  # a stream socket may take part of it; the descriptor went first
            sock.sendall(data[sent:])
    finally:
        os.close(fd)  # our duplicate; the receiver has its own


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _recv_message(sock: socket.socket) -> tuple[bytes, list[int]]:
    """The header's bytes and every descriptor that came with them (the caller owns them)."""
    want = _HEAD.size
    got = bytearray()
    fds: list[int] = []
    space = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
    try:
        while len(got) < want:
            data, ancdata, flags, _ = sock.recvmsg(want - len(got), space, _CMSG_CLOEXEC)
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                    fds.extend(a)
            if flags & getattr(socket, "MSG_CTRUNC", 0):
                raise SecureMemoryError(
                    f"the peer sent more than {_MAX_FDS} descriptors with one message; the "
                    "message is not a securememory secret and every descriptor was closed"
                )
            if not data:
                if not got and not fds:
                    raise EOFError("the peer closed the connection (no more secrets)")
                raise SecureMemoryError(
                    f"the peer closed the connection in the middle of a secret's message "
                    f"({len(got)} of {want} bytes came); nothing was kept"
                )
            got += data
    except BaseException:
        _close_all(fds)
        raise
    return bytes(got), fds


def receive(sock: socket.socket) -> Secret:
    """Receive a secret that the process at the other end of the connected ``AF_UNIX`` socket
    ``sock`` sent with :func:`send`: a :class:`~securememory.Secret` over the same pages.

    The descriptor is checked before it is mapped (a ``memfd_secret`` file, or a ``memfd``
    sealed against resizing, of exactly the size the header implies) and made close-on-exec;
    the creator's live marker must be in the pages. This process locks its own view (paid from
    its own ``RLIMIT_MEMLOCK``); closing the secret here only unmaps that view.

    Raises ``EOFError`` when the peer closed the connection before a message began;
    :class:`~securememory.SecureMemoryError` for a message that is not a secret (no descriptor,
    several, a bad header, a peer that hung up mid-message); ``ValueError`` for a descriptor of
    the wrong kind (a regular file, a pipe, an unsealed memfd) or size;
    :class:`~securememory.SecretClosedError` if the creator already wiped it. Every descriptor
    that came with a refused message is closed.
    """
    sock = _check_socket(sock)
    data, fds = _recv_message(sock)
    try:
        if not fds:
            raise SecureMemoryError(
                "the message carried no descriptor: the peer did not send a secret with "
                "securememory.send()"
            )
        if len(fds) != 1:
            raise SecureMemoryError(
                f"the message carried {len(fds)} descriptors; a secret's carries exactly one"
            )
        magic, flags, raw_name, size = _HEAD.unpack(data)
        if magic != _MAGIC:
            raise SecureMemoryError(
                "the message is not a securememory secret's (bad header); its descriptor was closed"
            )
        try:
            spec = _implementations.get(raw_name.rstrip(b"\0").decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise SecureMemoryError(
                "the message names no known implementation; its descriptor was closed"
            ) from None
        fd = fds.pop()
    except BaseException:
        _close_all(fds)
        raise
    return adopt(spec, size, fd, inheritable=bool(flags & _INHERITABLE))  # owns fd, even failing


# -- multiprocessing ---------------------------------------------------------------------------


def _rebuild(dup: Any, name: str, size: int, inheritable: bool) -> Secret:
    """Unpickling a secret in the receiving process: take the descriptor from multiprocessing
    and map the same pages."""
    fd: int = dup.detach()
    try:
        spec = _implementations.get(name)
    except BaseException:
        os.close(fd)
        raise
    return adopt(spec, size, fd, inheritable=inheritable)


def _reduce(secret: Secret) -> tuple[Callable[..., Secret], tuple[Any, ...]]:
    from multiprocessing.reduction import DupFd

    len(secret)  # closed: SecretClosedError; a forked child's inherited one is mapped here
    fd = secret._fd
    if fd < 0:
        raise TypeError(
            "this secret's pages are private to its process (it was not created with "
            "inheritable=True), so multiprocessing cannot pass it. Create it with "
            "inheritable=True"
        )
    return _rebuild, (DupFd(fd), secret.implementation, len(secret), bool(secret._inheritable))


def _register() -> None:
    from multiprocessing.reduction import ForkingPickler

    ForkingPickler.register(Secret, _reduce)


_register()
