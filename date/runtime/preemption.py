"""Stopping without losing work: SLURM preemption and time limits, and SIGTERM / Ctrl-C outside SLURM.

Before preempting a job or at ``signal_delay_s`` before its time limit, SLURM sends every task the
signal submitit asked for (USR2). submitit's own handler (rank 0) calls the launcher's ``checkpoint()``
(which resubmits the whole Hydra job), requeues the job and exits. Run as it is, that handler fires in
the middle of an iteration and everything since the last ``last.pth`` is lost.

:class:`CheckpointSignal` takes the signal over while training runs: the handler only records it;
the training loop asks :meth:`CheckpointSignal.requested` at each iteration boundary (all ranks agree
through one all-reduce), writes ``last.pth`` with the iteration-level state, and calls
:meth:`CheckpointSignal.hand_over`, which runs submitit's handler: requeue and exit. The requeued job
starts the same Hydra task, which resumes from ``last.pth`` and continues the same MLflow run.

Outside submitit, :class:`StopOnSignal` does the same for SIGTERM (``kill``, a scheduler stopping the
job) and SIGINT (Ctrl-C): finish the iteration, write ``last.pth``, print how to resume, exit with
128 + the signal number. A second Ctrl-C stops at once (last.pth is then the previous one).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator, NoReturn, Optional

import torch
import torch.distributed as dist

from date.runtime.distributed import barrier

log = logging.getLogger(__name__)


class _DeferredSignal:
    """A signal recorded by its handler and acted on by the training loop at an iteration boundary."""

    received = False

    def requested(self, device: torch.device) -> bool:
        """True on every rank once any rank has received the signal (an all-reduce when distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.received
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class CheckpointSignal(_DeferredSignal):
    """Defers submitit's checkpoint signal to the training loop's next iteration boundary.

    Args:
        signum: the signal submitit handles (``submitit.JobEnvironment.USR_SIG``, USR2 by default).
        previous: submitit's handler for it, run by :meth:`hand_over`.
    """

    def __init__(self, signum: int, previous):
        self.signum = signum
        self.previous = previous
        self.received = False
        self.handed_over = False

    def _record(self, signum, frame) -> None:
        if not self.received:
            log.warning("Received %s (preemption or time limit): checkpointing at the end of this iteration.",
                        signal.Signals(signum).name)
        self.received = True

    def hand_over(self) -> NoReturn:
        """Call after last.pth is written: submitit requeues the job (rank 0) and the process exits.

        Ranks other than 0 leave only after rank 0 has requeued (the barrier in ``finally`` runs while
        rank 0 unwinds from submitit's exit), so the job is not seen failing before it is requeued.
        """
        self.handed_over = True
        barrier()  # last.pth is complete before rank 0 requeues
        try:
            if callable(self.previous):
                self.previous(self.signum, None)  # submitit, rank 0: checkpoint(), scontrol requeue, sys.exit
        finally:
            barrier()
        raise SystemExit(f"Stopped for requeueing after {signal.Signals(self.signum).name}.")


class StopOnSignal(_DeferredSignal):
    """SIGTERM / SIGINT outside SLURM, deferred to the next iteration boundary; same interface as
    :class:`CheckpointSignal` (the training loop calls ``requested`` and, after writing last.pth, ``hand_over``).

    Args:
        resume_command: the command line that resumes this run, printed when it stops.
    """

    def __init__(self, resume_command: str):
        self.resume_command = resume_command
        self.signum: Optional[int] = None
        self.handed_over = False

    def _record(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        if not self.received:
            log.warning("Received %s: stopping after this iteration, once last.pth is written (Ctrl-C again stops "
                        "at once and loses the iterations since the last checkpoint).", signal.Signals(signum).name)
        self.signum, self.received = signum, True

    def hand_over(self) -> NoReturn:
        """Call after last.pth is written: say how to resume, then exit with 128 + the signal number."""
        self.handed_over = True
        barrier()  # last.pth is complete before any rank exits
        name = signal.Signals(self.signum).name
        log.info("Stopped by %s; last.pth is written. Resume with: %s", name, self.resume_command)
        raise SystemExit(128 + self.signum)


def _submitit_signal() -> Optional[int]:
    """The checkpoint signal of the submitit job this process runs in, or None outside submitit."""
    try:
        import submitit

        submitit.JobEnvironment()  # raises outside a submitit job
    except (ImportError, RuntimeError):
        return None
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG, None)


@contextlib.contextmanager
def checkpoint_on_signal(resume_command: str) -> Iterator[Optional[CheckpointSignal | StopOnSignal]]:
    """For the block's duration, defer the stop signals to the training loop: submitit's checkpoint signal
    inside a submitit job (its handler is restored afterwards), else SIGTERM and SIGINT. Yields None off the
    main thread (only the main thread may set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    signum = _submitit_signal()
    if signum is None:
        hook = StopOnSignal(resume_command)
        with _handlers({signal.SIGTERM: hook._record, signal.SIGINT: hook._record}):
            yield hook
        if hook.received and not hook.handed_over:
            log.info("The %s arrived after the last iteration: the run finished and is saved; there is nothing to "
                     "resume.", signal.Signals(hook.signum).name)
        return
    hook = CheckpointSignal(signum, signal.getsignal(signum))
    with _handlers({signum: hook._record}):
        yield hook
    if hook.received and not hook.handed_over:
        log.info("The %s arrived after the last iteration; the job finishes instead of requeueing.",
                 signal.Signals(signum).name)


@contextlib.contextmanager
def _handlers(handlers: dict) -> Iterator[None]:
    """Install signal handlers for the block; the previous ones afterwards."""
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
