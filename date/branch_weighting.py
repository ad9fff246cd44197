"""How much each branch's loss counts as training progresses.

total = w_o2m(t) * L_o2m + w_o2o(t) * L_o2o, t = fraction of training iterations done. DATE itself uses
a constant 1 : 1; the other schedules are ablations researchers ask for (e.g. letting the one-to-many
branch fade out so the end of training optimises only what runs at inference).
"""
from dataclasses import dataclass

O2M_SCHEDULES = ("constant", "linear_decay", "step")


@dataclass(frozen=True)
class BranchWeighting:
    """Branch weights as a function of training progress.

    Args:
        o2m, o2o: base weights of the one-to-many and one-to-one branch losses.
        o2m_schedule: "constant"; "linear_decay" (o2m weight falls linearly to 0 at ``o2m_until``);
            "step" (o2m weight drops to 0 once progress reaches ``o2m_until``).
        o2m_until: fraction of training in [0, 1] where the o2m weight reaches 0.
        o2o_warmup: fraction of training over which the o2o weight ramps linearly from 0 to ``o2o``.
    """

    o2m: float = 1.0
    o2o: float = 1.0
    o2m_schedule: str = "constant"
    o2m_until: float = 1.0
    o2o_warmup: float = 0.0

    def __post_init__(self):
        if self.o2m_schedule not in O2M_SCHEDULES:
            raise ValueError(f"branch_weighting.o2m_schedule={self.o2m_schedule!r}: expected one of {O2M_SCHEDULES}")
        if not 0.0 < self.o2m_until <= 1.0:
            raise ValueError(f"branch_weighting.o2m_until={self.o2m_until}: expected a fraction in (0, 1]")
        if not 0.0 <= self.o2o_warmup < 1.0:
            raise ValueError(f"branch_weighting.o2o_warmup={self.o2o_warmup}: expected a fraction in [0, 1)")
        if self.o2m < 0 or self.o2o < 0:
            raise ValueError(f"branch weights must be >= 0, got o2m={self.o2m}, o2o={self.o2o}")

    def __call__(self, progress: float) -> dict[str, float]:
        t = min(max(float(progress), 0.0), 1.0)
        if self.o2m_schedule == "linear_decay":
            w_o2m = self.o2m * max(0.0, 1.0 - t / self.o2m_until)
        elif self.o2m_schedule == "step":
            w_o2m = self.o2m if t < self.o2m_until else 0.0
        else:
            w_o2m = self.o2m
        w_o2o = self.o2o * (min(1.0, t / self.o2o_warmup) if self.o2o_warmup > 0 else 1.0)
        return {"o2m": w_o2m, "o2o": w_o2o}
