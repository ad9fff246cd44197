"""Preemption and time limits on SLURM: checkpoint at the next iteration, then let submitit requeue.

Before preempting a job or at ``signal_delay_s`` before its time limit, SLURM sends every task the
signal submitit asked for (USR2). submitit's own handler (rank 0) calls the launcher's ``checkpoint()``
(which resubmits the whole Hydra job), requeues the job and exits. Run as it is, that handler fires in
the middle of an iteration and everything since the last ``last.pth`` is lost.

:class:`CheckpointSignal` takes the signal over while training runs: the handler only records it;
the training loop asks :meth:`CheckpointSignal.requested` at each iteration boundary (all ranks agree
through one all-reduce), writes ``last.pth`` with the iteration-level state, and calls
:meth:`CheckpointSignal.hand_over`, which runs submitit's handler: requeue and exit. The requeued job
starts the same Hydra task, which resumes from ``last.pth`` and continues the same MLflow run.
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


class CheckpointSignal:
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

    def requested(self, device: torch.device) -> bool:
        """True on every rank once any rank has received the signal (an all-reduce when distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.received
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

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


def _submitit_signal() -> Optional[int]:
    """The checkpoint signal of the submitit job this process runs in, or None outside submitit."""
    try:
        import submitit

        submitit.JobEnvironment()  # raises outside a submitit job
    except (ImportError, RuntimeError):
        return None
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG, None)


@contextlib.contextmanager
def checkpoint_on_signal() -> Iterator[Optional[CheckpointSignal]]:
    """Inside a submitit job, defer its checkpoint signal to the training loop for the block's duration
    (submitit's handler is restored afterwards). Yields None outside submitit or off the main thread
    (only the main thread may set signal handlers)."""
    signum = _submitit_signal()
    if signum is None or threading.current_thread() is not threading.main_thread():
        yield None
        return
    hook = CheckpointSignal(signum, signal.getsignal(signum))
    signal.signal(signum, hook._record)
    try:
        yield hook
    finally:
        signal.signal(signum, hook.previous if hook.previous is not None else signal.SIG_DFL)
        if hook.received and not hook.handed_over:
            log.info("The %s arrived after the last iteration; the job finishes instead of requeueing.",
                     signal.Signals(signum).name)
