"""One-to-one assignment (POTO, DeFCN): exactly one positive location per ground truth.

Legend: B = images, N = locations over all FPN levels, M = ground truths (padded to the batch maximum),
C = classes, K = candidates kept per ground truth.

The matching maximises the summed quality Q over one-to-one matchings (Hungarian). It is solved exactly
on a reduced matrix: some optimal matching uses, for every gt g, one of g's top-m locations by Q (m =
number of gts in the image), because at most m-1 of those can be held by other gts and moving g to a
free one never lowers the total. The top-m candidates are found on the device; only the small matrix
(at most m^2 rows x m columns per image) goes to the CPU for scipy, in one transfer for the batch.
"""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from date.box_ops import batched_pairwise_iou, in_center_region

OUTSIDE_QUALITY = -1.0


class NonFiniteQualityError(FloatingPointError):
    """POTO's quality holds NaN or Inf: the one-to-one branch's predictions are not finite (a diverged run);
    scipy cannot match on such a matrix."""


@torch.no_grad()
def poto_quality(
    cls_logits: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    alpha: float,
    center_radius: float,
) -> Tensor:
    """POTO's quality Q = p(c_g)^(1-alpha) * IoU^alpha * [location in g's centre region].

    The centre region is the gt centre +- center_radius * (stride of the location's level), clipped to
    the gt box; all levels compete.

    Args:
        cls_logits (Tensor[B, N, C]): the one-to-one branch's own logits.
        pred_boxes (Tensor[B, N, 4]): the one-to-one branch's decoded boxes, xyxy.
        points (Tensor[N, 2]), strides (Tensor[N]): location centres and their level's stride.
        gt_boxes (Tensor[B, M, 4]), gt_labels (Tensor[B, M]) (padding entries may hold anything valid).
    Returns:
        Tensor[B, N, M] float32, OUTSIDE_QUALITY (-1) outside the centre regions.
    """
    B, N, _ = cls_logits.shape
    M = gt_boxes.shape[1]
    prob = cls_logits.float().sigmoid().gather(2, gt_labels[:, None, :].expand(B, N, M))  # [B, N, M]
    iou = batched_pairwise_iou(pred_boxes.float(), gt_boxes.float())  # [B, N, M]
    in_center = in_center_region(points, strides, gt_boxes, center_radius)  # [B, N, M]
    quality = prob.pow(1 - alpha) * iou.pow(alpha)
    # Outside the centre region Q = -1 (DeFCN's value) rather than 0: early in training predicted boxes
    # overlap no gt, every Q inside the region is 0 too, and with 0 outside the matching could pick any
    # location in the image; -1 keeps the positive inside its object's centre region.
    return quality.masked_fill(~in_center, OUTSIDE_QUALITY)


def match_one_to_one(quality: Tensor) -> Tensor:
    """Maximum-quality one-to-one matching of locations to ground truths.

    Args:
        quality (Tensor[N, M]): quality of location n for gt m.
    Returns:
        LongTensor[M]: the location matched to each gt; -1 only where M > N leaves a gt unmatched.
        Its total quality equals the optimum of ``linear_sum_assignment(quality, maximize=True)``.
    """
    if quality.dim() != 2:
        raise ValueError(f"quality must be (num_locations, num_gts), got shape {tuple(quality.shape)}")
    num_gts = torch.tensor([quality.shape[1]])
    return match_one_to_one_batched(quality[None], num_gts)[0]


@torch.no_grad()
def match_one_to_one_batched(quality: Tensor, num_gts: Tensor) -> Tensor:
    """Per-image maximum-quality one-to-one matching on a padded batch.

    Args:
        quality (Tensor[B, N, M]): columns >= num_gts[b] are padding and ignored.
        num_gts (Tensor[B]): real ground truths per image.
    Returns:
        LongTensor[B, M] on quality's device: matched location per gt, -1 for padding (and for gts left
        over when num_gts[b] > N).
    """
    B, N, M = quality.shape
    matched = np.full((B, M), -1, dtype=np.int64)
    if M == 0 or N == 0:
        return torch.from_numpy(matched).to(quality.device)
    K = min(M, N)
    # Top-K locations per gt, then Q of those rows for every gt: the reduced matrices.
    cand = quality.topk(K, dim=1).indices  # [B, K, M], sorted by quality per gt
    cand = cand.permute(0, 2, 1).reshape(B, M * K)  # gt-major: gt g's candidates at [g*K, (g+1)*K)
    cand_quality = quality.gather(1, cand[:, :, None].expand(B, M * K, M))  # [B, M*K, M]
    cand, cand_quality = cand.cpu().numpy(), cand_quality.float().cpu().numpy()  # the one host transfer

    for b, m in enumerate(num_gts.tolist()):
        if m == 0:
            continue
        k = min(m, N)
        rows = (np.arange(m)[:, None] * K + np.arange(k)[None, :]).reshape(-1)  # each real gt's top-k
        locations, first = np.unique(cand[b, rows], return_index=True)
        small = cand_quality[b, rows[first], :m]  # [<= m*k, m]
        if not np.isfinite(small).all():
            raise NonFiniteQualityError(f"POTO's matching quality of image {b} of the batch has NaN/Inf entries: the "
                                        "o2o branch's predictions (o2o/cls logits or boxes) are not finite")
        row_ind, col_ind = linear_sum_assignment(small, maximize=True)
        matched[b, col_ind] = locations[row_ind]
    return torch.from_numpy(matched).to(quality.device)


class POTO:
    """The one-to-one assigner: POTO's quality, then the exact maximum-quality matching per image.

    Args:
        alpha: quality exponent, Q = p^(1-alpha) * IoU^alpha (assigner.poto_alpha).
        center_radius: centre prior in strides of each location's level (assigner.poto_center_radius).
    """

    def __init__(self, *, alpha: float, center_radius: float):
        self.alpha = alpha
        self.center_radius = center_radius

    @torch.no_grad()
    def __call__(self, cls_logits: Tensor, pred_boxes: Tensor, loc, gt) -> Tensor:
        """The one-to-one branch's logits [B, N, C] and boxes [B, N, 4], the locations (``points`` [N, 2],
        ``strides`` [N]) and the padded gts (``boxes`` [B, M, 4], ``labels`` [B, M], ``num`` [B])
        -> LongTensor[B, M]: the location matched to each gt, -1 for padding."""
        quality = poto_quality(cls_logits, pred_boxes, loc.points, loc.strides, gt.boxes, gt.labels, alpha=self.alpha,
                               center_radius=self.center_radius)  # [B, N, M]
        return match_one_to_one_batched(quality, gt.num)
