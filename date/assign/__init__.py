"""Label assignment: which locations are positives for which ground truths (no gradients)."""
from date.assign.one_to_many import fcos_assign, topk_assign
from date.assign.one_to_one import match_one_to_one, match_one_to_one_batched, poto_quality

__all__ = ["fcos_assign", "match_one_to_one", "match_one_to_one_batched", "poto_quality", "topk_assign"]
