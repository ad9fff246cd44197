"""How much each branch's loss counts as training progresses (the ``branch_weighting`` group's schema).

total = w_o2m(t) * L_o2m + w_o2o(t) * L_o2o, t = fraction of training iterations done. DATE itself uses
a constant 1 : 1; the other schedules are ablations researchers ask for (e.g. letting the one-to-many
branch fade out so the end of training optimises only what runs at inference).
"""
from dataclasses import dataclass

from date.choice import Choice


class O2MSchedule(Choice):
    constant = "constant"  # w_o2m = o2m all along
    linear_decay = "linear_decay"  # falls linearly to 0 at o2m_until
    step = "step"  # 0 from o2m_until on


@dataclass
class BranchWeighting:
    """Branch weights as a function of training progress; also the schema of conf/branch_weighting/.

    Built from the config node once (``OmegaConf.to_object``), which runs the checks below.
    """

    o2m: float = 1.0  # base weight of the one-to-many branch loss
    o2o: float = 1.0  # base weight of the one-to-one branch loss
    o2m_schedule: O2MSchedule = O2MSchedule.constant  # constant | linear_decay | step
    o2m_until: float = 1.0  # fraction of training where the o2m weight reaches 0 / is cut
    o2o_warmup: float = 0.0  # fraction of training over which the o2o weight ramps up from 0

    def __post_init__(self):
        try:
            self.o2m_schedule = O2MSchedule(self.o2m_schedule)
        except ValueError:
            raise ValueError(f"branch_weighting.o2m_schedule={self.o2m_schedule!r}: expected one of "
                             f"{[s.value for s in O2MSchedule]}") from None
        if not 0.0 < self.o2m_until <= 1.0:
            raise ValueError(f"branch_weighting.o2m_until={self.o2m_until}: expected a fraction in (0, 1]")
        if not 0.0 <= self.o2o_warmup < 1.0:
            raise ValueError(f"branch_weighting.o2o_warmup={self.o2o_warmup}: expected a fraction in [0, 1)")
        if self.o2m < 0 or self.o2o < 0:
            raise ValueError(f"branch weights must be >= 0, got o2m={self.o2m}, o2o={self.o2o}")

    def __call__(self, progress: float) -> dict[str, float]:
        t = min(max(float(progress), 0.0), 1.0)
        if self.o2m_schedule == O2MSchedule.linear_decay:
            w_o2m = self.o2m * max(0.0, 1.0 - t / self.o2m_until)
        elif self.o2m_schedule == O2MSchedule.step:
            w_o2m = self.o2m if t < self.o2m_until else 0.0
        else:
            w_o2m = self.o2m
        w_o2o = self.o2o * (min(1.0, t / self.o2o_warmup) if self.o2o_warmup > 0 else 1.0)
        return {"o2m": w_o2m, "o2o": w_o2o}
