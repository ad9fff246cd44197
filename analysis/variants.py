"""Group runs into variants (same configuration, different seeds) and name them as the paper does.

A variant is one value of every grouping key: the ``assigner`` tag, the other group tags (schedule,
backbone, branch_weighting, dataset), the grouping params (``model.use_3dmf``, --group-param) and every
logged param whose value differs between the analysed runs (optim.lr, dataset.num_train, ...), the
bookkeeping ones (BOOKKEEPING_PARAMS) aside: runs trained differently are never seeds of one variant.
Two runs of one variant with the same seed are repeats, not seeds: :func:`check_seeds` refuses them.
Figures get one panel per schedule. A variant's o2o baseline is the POTO variant trained in the same
setting: same schedule, backbone, dataset, 3DMF choice and differing params (branch_weighting and the o2m
branch's own switches have no meaning for a one-branch model).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Optional, Sequence

from analysis.runs import AnalysisError, RunRecord
from date.runtime.tracking import GROUP_TAGS

PAPER_NAMES = {"o2m": "FCOS", "o2o": "POTO", "dual": "DATE", "dual_topk": "DATE (top-k)"}
ASSIGNER_ORDER = ("o2m", "o2o", "dual", "dual_topk")
BASELINE_ASSIGNER = "o2o"
PANEL_KEY = "schedule"
# Params date.train logs (date.config.flatten of the whole resolved config) that say where runs are written,
# how they are named, how often they log, evaluate or checkpoint, or how fast data load: not what is trained.
# Runs differing only in these (and the seed, which pairs runs) are seeds of one variant. Everything else
# that differs splits variants, device / amp / channels_last included (they change the arithmetic: bf16,
# kernel order). Run dir, sweep id and git commit are tags, not params.
BOOKKEEPING_PARAMS = frozenset({
    "seed", "name", "resume", "num_workers", "log_every", "eval_every", "checkpoint_every_iters",
    "eval_o2m_branch",  # dual: also evaluate the o2m branch (a diagnostic; the training is the same)
    "tracking.uri", "tracking.experiment", "tracking.system_metrics", "tracking.log_model",
    "dataset.cache_dir",  # where synthetic sets are cached; the data are fixed by the other dataset.* params
})
# Keys that say *how* a model is trained rather than *in which setting*; a baseline may differ in them.
METHOD_KEYS = ("assigner", "branch_weighting", "params.assigner.mode")
METHOD_PREFIXES = ("params.branch_weighting.",)  # the branch weights: a one-branch model has one branch
# Params that configure only the one-to-many branch (--group-param model.share_towers, ...): the o2o-only
# baseline has no such branch, so they are not part of the setting it must share either.
O2M_ONLY_PARAMS = tuple(f"params.{k}" for k in (
    "model.share_towers", "model.share_scales", "model.o2m_box_coding", "model.o2m_box_loss", "model.o2m_detach", "model.nms_thresh",
    "model.loss_weights.o2m/cls", "model.loss_weights.o2m/iou", "model.loss_weights.o2m/ctr", "assigner.o2m",
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
        return tuple((k, v) for k, v in self.key if k not in METHOD_KEYS and not k.startswith(METHOD_PREFIXES)
                     and k not in O2M_ONLY_PARAMS)

    @property
    def is_baseline(self) -> bool:
        return self.assigner == BASELINE_ASSIGNER


def group_variants(records: Sequence[RunRecord]) -> list[Variant]:
    """Variants of ``records``, ordered by panel, then FCOS, POTO, DATE, DATE (top-k), then others."""
    params = differing_params(records)
    keyed = [(grouping_key(r, params), r) for r in records]
    varying = labelled_keys([dict(k) for k, _ in keyed])
    variants: dict[tuple, Variant] = {}
    for key, record in keyed:
        if key not in variants:
            variants[key] = Variant(key=key, label=variant_label(dict(key), varying))
        variants[key].runs.append(record)
    order = {a: i for i, a in enumerate(ASSIGNER_ORDER)}
    return sorted(variants.values(), key=lambda v: (v.panel, order.get(v.assigner, len(order)), v.label))


def differing_params(records: Sequence[RunRecord]) -> list[str]:
    """The logged params (bookkeeping aside) whose value is not the same in every run ("" = not logged)."""
    names = sorted(set().union(*(r.params.keys() for r in records)) - BOOKKEEPING_PARAMS) if records else []
    return [k for k in names if len({r.params.get(k, "") for r in records}) > 1]


def grouping_key(record: RunRecord, params: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**record.groups, **{f"params.{k}": record.params.get(k, "") for k in params}}.items()))


def labelled_keys(groups: Sequence[dict[str, str]]) -> list[str]:
    """The grouping keys a label must show: those that vary, except a group's own params that its tag
    already names (schedule.epochs is the same within each schedule=... tag: the tag says it)."""
    keys = sorted(set().union(*(g.keys() for g in groups))) if groups else []
    varying = [k for k in keys if len({g.get(k, "") for g in groups}) > 1]
    return [k for k in varying if not _named_by_tag(k, groups)]


def variant_label(groups: dict[str, str], varying: Sequence[str] = ()) -> str:
    """"DATE", "POTO + 3DMF", "DATE (R50, o2m_decay)", "DATE (lr=0.02)": the paper's name, 3DMF, then the
    other keys that vary between the analysed runs (the schedule is the panel, not part of the label)."""
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


def check_seeds(variants: Sequence[Variant]) -> None:
    """Raise AnalysisError when a variant holds two runs of one seed: same seed and same logged config (the
    bookkeeping params aside) make a repeat, and counting it as a second seed would fake evidence."""
    problems = []
    for variant in variants:
        for seed in sorted(s for s, count in Counter(r.seed for r in variant.runs).items() if count > 1):
            runs = [f"{r.run_name or r.run_id} (run {r.run_id}" + (f", sweep {r.sweep_id})" if r.sweep_id else ")")
                    for r in variant.runs if r.seed == seed]
            problems.append(f"{variant.label} [schedule {variant.panel}], seed {seed}: {' and '.join(runs)}")
    if problems:
        raise AnalysisError(
            "Runs with the same seed and the same logged config (bookkeeping params aside) are repeats, not "
            "seeds; pooling them would count one seed twice. " + "; ".join(problems) + ". Analyse one copy: "
            "select the runs with --sweep-id (or --tag), or delete the repeated run in MLflow.")


def _named_by_tag(key: str, groups: Sequence[dict[str, str]]) -> bool:
    """``params.<group>.<field>`` takes one value within each value of the ``<group>`` tag."""
    group = next((t for t in GROUP_TAGS if key.startswith(f"params.{t}.")), None)
    if group is None:
        return False
    values = defaultdict(set)
    for g in groups:
        values[g.get(group, "")].add(g.get(key, ""))
    return all(len(v) == 1 for v in values.values())


def _short(key: str, value: str) -> str:
    if key == "backbone" and value.startswith("resnet"):
        return "R" + value[len("resnet"):]
    if key.startswith("params."):  # params.model.share_towers -> share_towers=False
        return f"{key.rsplit('.', 1)[-1]}={value if value != '' else '(not logged)'}"
    return value or f"no {key}"
