"""Stopping a job cleanly on SIGTERM and SIGINT.

Batch schedulers stop a job by sending SIGTERM and, after a grace period (Slurm's
``KillWait``, Kubernetes' ``terminationGracePeriodSeconds``, 30 s by default), SIGKILL.
While :func:`stop_on_signals` is active, either signal ends the job at once with
:class:`JobStopped` — unless the job is writing to its run store, in which case the write
is finished first (:meth:`Stopper.critical`), so the newest checkpoint is always
complete. The command then prints one line and exits with ``128 + signal number`` (143
for SIGTERM, 130 for SIGINT), as shells and schedulers expect of a stopped process.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class JobStopped(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """The job was stopped by a signal. A ``BaseException``, like ``KeyboardInterrupt``,
    so that no ``except Exception`` on the way up swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Stopper:
    """Signal handlers that raise :class:`JobStopped`, held back during writes."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal received
        self._depth = 0  # nesting of critical sections
        self._pending = False

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
        if self._depth:
            self._pending = True  # raised when the write is complete
            return
        raise JobStopped(self.received)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section that a stop signal does not interrupt (a write to the run store)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending:
                self._pending = False
                raise JobStopped(self.received)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Stopper]:
        """Install the handlers (main thread only; elsewhere this does nothing)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
