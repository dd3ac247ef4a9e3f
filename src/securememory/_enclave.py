"""Layer 3: sealed enclaves, a million secrets in a few pages of locked memory.

An :class:`Enclave` holds its secret encrypted (XChaCha20-Poly1305, libsodium through PyNaCl) in
an ordinary ~100-byte object; only the process's key and the plaintext of an open need locked
pages, and those are a fixed keyring of a few pages however many enclaves exist (see
``_backend/enclave.c``). :func:`purge` destroys the key and every secret; :func:`catch_signals`
purges on a signal, then lets it end the process.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Callable, NoReturn, Protocol, TypeVar

from . import _process, _region
from ._implementations import DEFAULT_ORDER
from ._region import EnclaveCore, check_size
from ._secret import Secret, create
from .errors import UnsupportedPlatformError

__all__ = [
    "OPEN_SCRUBS_REGISTERS",
    "Enclave",
    "EnclaveStats",
    "catch_signals",
    "enclave_stats",
    "purge",
    "reveal_key_halves",
]

# The end of every open zeroes the CPU's vector registers (all of them: vzeroall, and zmm16-31
# with AVX-512) in the compiled core, after whatever ran inside the block: a cipher keyed inside
# an open needs no further scrub of its own there. False where the core cannot (not x86-64).
OPEN_SCRUBS_REGISTERS = bool(_region.SCRUBS_VECTOR_REGISTERS)

E = TypeVar("E", bound="Enclave")


class _MakesSecrets(Protocol):
    """What :meth:`Enclave.open_secret` needs of a factory (``SecretFactory`` has it)."""

    def _create(
        self, size: int, fill: Callable[[memoryview], None] | None, *, inheritable: bool = ...
    ) -> Secret: ...


class Enclave(EnclaveCore):
    """A secret sealed with the process's key: ciphertext in ordinary memory, plaintext only in
    locked scratch pages for the length of a ``with e.open() as view:`` block.

    Make one with ``Enclave.seal(data)`` (a writable source is wiped), :meth:`random` or
    :meth:`Secret.seal`; read it with ``with e.open() as view:`` (a read-only memoryview, valid
    inside the block) or :meth:`open_secret`. Each costs about 110 bytes of ordinary memory and no
    mapping, lock or file descriptor: the tests hold a million in an 8 MiB ``RLIMIT_MEMLOCK``
    and 100,000 in 64 KiB, with the same 20 KiB locked as for one. ``close()`` (idempotent; also
    at the end of ``with Enclave.seal(x) as e:``) forgets the ciphertext; later opens raise
    :class:`~securememory.SecretClosedError`.

    Guaranteed: the key is never stored whole (two halves, L and R = BLAKE2b(L) xor K, in
    ``memfd_secret`` pages where the kernel has them, else locked undumpable pages; recombined
    for one seal or open and wiped right after, the stack and vector registers scrubbed); the
    plaintext of an open lives only in a slot of a locked, undumpable pool (or a dedicated
    locked mapping for large ones) and is wiped when the block ends, exception or not; a view
    kept past the block is released, and a slice of it reads zeros; a forked child cannot open
    its parent's enclaves; after :func:`purge` no enclave sealed before it opens again. Tampered
    ciphertext raises :class:`SecureMemoryError` (authenticated encryption).

    Not guaranteed: what the caller does with the bytes during an open (``bytes(view)`` makes an
    ordinary copy); the ciphertext itself is readable by anyone who can read the process (it is
    useless without the key, which lives only in the keyring); on a host without
    ``memfd_secret`` the keyring is readable to a process that can read this one's memory
    (``/proc/<pid>/mem``, ptrace), as locked pages always are.
    """

    __slots__ = ()

    @classmethod
    def random(cls: type[E], size: int) -> E:
        """``size`` bytes from the kernel's CSPRNG, written only into locked scratch, sealed."""
        return _region.enclave_random(cls, check_size(size))

    @staticmethod
    def rekey() -> None:
        """Split the process's key anew (new random L, R = BLAKE2b(L) xor K): a copy of the
        halves taken before is useless with the halves after. Every enclave stays valid."""
        _region.enclave_rekey()

    def open_secret(self, factory: _MakesSecrets | None = None) -> Secret:
        """Decrypt straight into the pages of a new :class:`Secret` of ``factory`` (default: the
        strongest implementation the host offers, as ``SecretFactory()`` picks). The enclave
        stays usable."""
        size = len(self)

        def fill(view: memoryview) -> None:
            self._decrypt_into(view)

        if factory is None:
            _process.stop_core_dumps()
            for spec in DEFAULT_ORDER:
                if spec.unavailable() is None:
                    return create(spec, size, fill)
            raise UnsupportedPlatformError("no implementation of Secret is available here")
        make = getattr(factory, "_create", None)
        if not callable(make):
            raise TypeError(f"factory must be a SecretFactory, not {type(factory).__name__}")
        return factory._create(size, fill)

    def __enter__(self: E) -> E:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        state = "closed" if self.closed else "sealed"
        return f"<Enclave {self.size} bytes {state}>"

    __str__ = __repr__

    def _refuse(self, *args: object) -> NoReturn:
        raise TypeError(
            "an Enclave cannot be pickled or copied: its key exists only in this process"
        )

    __reduce__ = __reduce_ex__ = __copy__ = __deepcopy__ = __getstate__ = _refuse


def _seal_secret(secret: Secret) -> Enclave:
    """The contents of ``secret`` sealed into a new enclave (one access; the secret stays open)."""
    with secret.access() as view:
        return _region.enclave_seal_view(Enclave, view)


def reveal_key_halves(fd: int) -> None:
    """The live proofs only: write the key's halves L || R (64 bytes) to ``fd`` straight from
    the keyring, so that a scan can look for the key (K = BLAKE2b-256(L, person
    "securememory-key") xor R) from outside the process."""
    _region.enclave_reveal(fd)


def purge() -> int:
    """Destroy the key that unseals every enclave made so far (each one's later opens raise
    :class:`SecureMemoryError`), wipe the plaintext of every open running now, and wipe and
    close every :class:`Secret` of this process. Returns how many secrets it closed.

    New enclaves sealed after it use a new key. Secrets being accessed by another thread right
    now are wiped and closed but stay mapped (that thread then reads zeros).
    """
    return _region.enclave_purge()


_caught: dict[int, Any] = {}


def catch_signals(*signals: int, after_purge: Callable[[int], None] | None = None) -> None:
    """On any of ``signals`` (default: SIGINT and SIGTERM), :func:`purge`, then end the process
    as the signal would have: its default action is restored and the signal raised again, so
    the process dies by that signal (a parent sees ``-SIGTERM``), or stops for SIGTSTP.

    ``after_purge(signum)``, if given, runs between the purge and the re-raise (to log, or for a
    test to inspect the purged process). Python runs signal handlers in the main thread between
    bytecodes: a process stuck in a long C call purges when the call returns. Must be called
    from the main thread (as ``signal.signal()``). ``signals`` are numbers or
    ``signal.Signals`` members.
    """
    chosen: tuple[int, ...] = signals or (signal.SIGINT, signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            purge()
            if after_purge is not None:
                after_purge(signum)
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in chosen:
        num = int(sig)
        _caught[num] = signal.signal(num, handler)


@dataclass(frozen=True)
class EnclaveStats:
    """The keyring of this process (see :func:`enclave_stats`)."""

    keyring_address: int  # start of the locked pages (key page, then the pool); 0 if none yet
    locked_bytes: int  # the keyring's locked pages: the same however many enclaves exist
    has_key: bool
    slots_busy: int  # opens running now in the pool
    slots_retired: int  # wiped slots a kept view still points at
    opens: int
    seals: int
    secretmem: bool  # the keyring is memfd_secret memory


def enclave_stats() -> EnclaveStats:
    """What the enclave keyring of this process uses right now."""
    address, locked, has_key, busy, retired, opens, seals, backing = _region.enclave_stats()
    return EnclaveStats(
        address,
        locked,
        bool(has_key),
        busy,
        retired,
        opens,
        seals,
        backing == _region.Backing.SECRETMEM.value and locked > 0,
    )
