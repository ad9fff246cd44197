"""Label assignment: which locations are positives for which ground truths (no gradients).

Pure functions (fcos_assign, topk_assign, poto_quality, match_one_to_one*) and the assigner objects the
criterion is built with (FCOSAssigner, TopKAssigner, POTO).
"""
from date.assign.one_to_many import FCOSAssigner, TopKAssigner, fcos_assign, topk_assign
from date.assign.one_to_one import (POTO, NonFiniteQualityError, match_one_to_one, match_one_to_one_batched,
                                   poto_quality)

__all__ = ["FCOSAssigner", "NonFiniteQualityError", "POTO", "TopKAssigner", "fcos_assign", "match_one_to_one",
           "match_one_to_one_batched", "poto_quality", "topk_assign"]
