"""Group runs into variants (same configuration, different seeds) and name them as the paper does.

A variant is one value of every grouping key: the ``assigner`` tag, the other group tags (schedule,
backbone, branch_weighting, dataset) and the grouping params (``model.use_3dmf``). Figures get one
panel per schedule. A variant's o2o baseline is the POTO variant trained in the same setting: same
schedule, backbone, dataset and 3DMF choice (branch_weighting and the o2m branch's own switches have no
meaning for a one-branch model).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

from analysis.runs import RunRecord

PAPER_NAMES = {"o2m": "FCOS", "o2o": "POTO", "dual": "DATE", "dual_topk": "DATE (top-k)"}
ASSIGNER_ORDER = ("o2m", "o2o", "dual", "dual_topk")
BASELINE_ASSIGNER = "o2o"
PANEL_KEY = "schedule"
# Keys that say *how* a model is trained rather than *in which setting*; a baseline may differ in them.
METHOD_KEYS = ("assigner", "branch_weighting")
# Params that configure only the one-to-many branch (--group-param model.share_towers, ...): the o2o-only
# baseline has no such branch, so they are not part of the setting it must share either.
O2M_ONLY_PARAMS = tuple(f"params.{k}" for k in (
    "model.share_towers", "model.o2m_box_coding", "model.o2m_box_loss", "model.o2m_detach", "assigner.o2m",
    "assigner.fcos_center_sampling", "assigner.topk", "assigner.topk_alpha", "assigner.topk_beta"))
_3DMF = "params.model.use_3dmf"


@dataclass
class Variant:
    """Runs sharing every grouping value. ``key`` is the sorted (key, value) pairs of ``groups``."""

    key: tuple[tuple[str, str], ...]
    label: str
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def groups(self) -> dict[str, str]:
        return dict(self.key)

    @property
    def assigner(self) -> str:
        return self.groups.get("assigner", "")

    @property
    def panel(self) -> str:
        return self.groups.get(PANEL_KEY, "")

    @property
    def context(self) -> tuple[tuple[str, str], ...]:
        """The setting (everything but the method keys and the o2m-only params): what a baseline must share."""
        return tuple((k, v) for k, v in self.key if k not in METHOD_KEYS and k not in O2M_ONLY_PARAMS)

    @property
    def is_baseline(self) -> bool:
        return self.assigner == BASELINE_ASSIGNER


def group_variants(records: Sequence[RunRecord]) -> list[Variant]:
    """Variants of ``records``, ordered by panel, then FCOS, POTO, DATE, DATE (top-k), then others."""
    varying = _varying_keys(records)
    variants: dict[tuple, Variant] = {}
    for record in records:
        key = tuple(sorted(record.groups.items()))
        if key not in variants:
            variants[key] = Variant(key=key, label=variant_label(dict(key), varying))
        variants[key].runs.append(record)
    order = {a: i for i, a in enumerate(ASSIGNER_ORDER)}
    return sorted(variants.values(), key=lambda v: (v.panel, order.get(v.assigner, len(order)), v.label))


def variant_label(groups: dict[str, str], varying: Sequence[str] = ()) -> str:
    """"DATE", "POTO + 3DMF", "DATE (R50, o2m_decay)": the paper's name, 3DMF, then the other keys that
    vary between the analysed runs (the schedule is the panel, not part of the label)."""
    assigner = groups.get("assigner", "")
    label = PAPER_NAMES.get(assigner, assigner or "unknown assigner")
    if groups.get(_3DMF, "").lower() == "true":
        label += " + 3DMF"
    extras = [_short(k, groups.get(k, "")) for k in varying if k not in ("assigner", PANEL_KEY, _3DMF)]
    return f"{label} ({', '.join(extras)})" if extras else label


def find_baseline(variant: Variant, variants: Sequence[Variant]) -> Optional[Variant]:
    """The POTO variant in ``variant``'s setting; with several (differing in branch_weighting, which a
    one-branch model ignores) the one with the default 'equal' weighting, else the first."""
    candidates = [v for v in variants if v.is_baseline and v.context == variant.context]
    if not candidates:
        return None
    return next((v for v in candidates if v.groups.get("branch_weighting") == "equal"), candidates[0])


def duplicate_seeds(variant: Variant) -> list[str]:
    """Seeds that appear in more than one run of the variant (each run still counts once in n)."""
    return sorted(seed for seed, count in Counter(r.seed for r in variant.runs).items() if count > 1)


def _varying_keys(records: Sequence[RunRecord]) -> list[str]:
    keys = sorted(set().union(*(r.groups.keys() for r in records))) if records else []
    return [k for k in keys if len({r.groups.get(k, "") for r in records}) > 1]


def _short(key: str, value: str) -> str:
    if key == "backbone" and value.startswith("resnet"):
        return "R" + value[len("resnet"):]
    if key.startswith("params."):  # params.model.share_towers -> share_towers=False
        return f"{key.rsplit('.', 1)[-1]}={value}"
    return value or f"no {key}"
