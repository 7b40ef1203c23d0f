"""Named evaluation protocols: what each reference evaluator does, as data.

``Protocol`` bundles every knob the field's evaluators disagree on (ks, IoU
thresholds and comparison, NMS, tie order, ranking by score or as given, the
IoU's union, mAP settings and the result's structure); ``PROTOCOLS`` holds the
named ones (``'jvmr'``, ``'2dtan'``, ``'moment_detr'``, ``'tvr'``),
``get_protocol`` looks one up, and ``DATASET_PROTOCOLS`` /
``protocol_for_dataset`` give each dataset the protocol of its published
tables. The constants of the reproduced evaluators (moment_detr's IoU
thresholds and length ranges, TVR's tasks, query types, thresholds and top-ks)
are defined here too, next to the protocols built from them. Applying a
protocol to predictions is ``jvmr.metrics.evaluation``'s job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jvmr.metrics.recall import DEFAULT_IOU_THRESHOLDS, DEFAULT_KS, _check_ks_thresholds

PROTOCOL_OUTPUTS = ("flat", "moment_detr", "tvr")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: how predictions are post-processed and compared.

    Attributes:
      name: Short identifier used in logs.
      ks: The k of R@k.
      iou_thresholds: IoU thresholds t of ``R@k,IoU=t``.
      iou_comparison: ``'>='`` (TVR, moment_detr, UnLoc) or ``'>'`` (2D-TAN,
        mmaction2).
      nms_threshold: Greedy NMS threshold applied to the candidates before R@k,
        or ``None`` for plain top-k by score.
      tie_break: Order of equal-score candidates when ranking by score:
        ``'earlier'`` (stable, the library default) or ``'later'`` (2D-TAN's
        ``np.argsort(...)[::-1]``).
      rank_by: ``'score'`` (candidates ranked by score, then NMS / top-k) or
        ``'given'`` (predictions used in the order given, first row = top-1,
        as moment_detr's ``compute_mr_r1``; ``evaluate_candidates`` ranks by
        score first).
      map_iou_thresholds: IoU thresholds of the moment_detr-style mAP; empty
        for no mAP.
      max_pred_windows: Number of leading prediction rows used for the mAP
        (moment_detr ``max_pred_windows=10``), ``None`` for all.
      iou_union: How the IoU with the ground truth divides: ``'exact'``
        (``len_a + len_b - inter``) or ``'hull'`` (``max(e) - min(s)``); equal
        in exact arithmetic when the spans overlap, but they round apart on
        threshold boundaries, so each protocol uses its reference's.
      gt_select: With several GT windows, ``None`` takes the best IoU; a union
        name picks the window by that IoU first (moment_detr R1: ``'exact'``).
      output: The result's structure: ``'flat'`` (``{'R@1,IoU=0.5': .., 'mIoU':
        ..}``), ``'moment_detr'`` (``{'brief': .., 'full': .., 'short': ..}``)
        or ``'tvr'`` (``{'SVMR': {'0.5-r1': ..}}``), each as its reference
        evaluator writes it. ``flat_metrics`` turns any of them into flat keys.
      reference: The reference evaluator the protocol reproduces (free text).
    """

    name: str = "jvmr"
    ks: tuple[int, ...] = DEFAULT_KS
    iou_thresholds: tuple[float, ...] = DEFAULT_IOU_THRESHOLDS
    iou_comparison: str = ">="
    nms_threshold: float | None = 0.5
    tie_break: str = "earlier"
    rank_by: str = "score"
    map_iou_thresholds: tuple[float, ...] = ()
    max_pred_windows: int | None = None
    iou_union: str = "exact"
    gt_select: str | None = None
    output: str = "flat"
    reference: str = ""

    def __post_init__(self):
        _check_ks_thresholds(self.ks, self.iou_thresholds, self.iou_comparison)
        if self.nms_threshold is not None and not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1] or None, got {self.nms_threshold!r}")
        if self.tie_break not in ("earlier", "later"):
            raise ValueError(f"tie_break must be 'earlier' or 'later', got {self.tie_break!r}")
        if self.rank_by not in ("score", "given"):
            raise ValueError(f"rank_by must be 'score' or 'given', got {self.rank_by!r}")
        if self.rank_by == "given" and self.nms_threshold is not None:
            raise ValueError("rank_by='given' cannot be combined with NMS")
        if any(not 0.0 <= t <= 1.0 for t in self.map_iou_thresholds):
            raise ValueError(f"map_iou_thresholds must be in [0, 1], got {self.map_iou_thresholds!r}")
        if self.max_pred_windows is not None and self.max_pred_windows < 1:
            raise ValueError(f"max_pred_windows must be >= 1 or None, got {self.max_pred_windows!r}")
        if self.iou_union not in ("exact", "hull") or self.gt_select not in (None, "exact", "hull"):
            raise ValueError(f"iou_union / gt_select must be 'exact' or 'hull', got {self.iou_union!r} / "
                             f"{self.gt_select!r}")
        if self.output not in PROTOCOL_OUTPUTS:
            raise ValueError(f"output must be one of {PROTOCOL_OUTPUTS}, got {self.output!r}")
        if self.output == "moment_detr" and not self.map_iou_thresholds:
            raise ValueError("output='moment_detr' needs map_iou_thresholds")

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``evaluate_predictions`` (everything but the name)."""
        return dict(ks=tuple(self.ks), iou_thresholds=tuple(self.iou_thresholds),
                    iou_comparison=self.iou_comparison, nms_threshold=self.nms_threshold,
                    iou_union=self.iou_union, gt_select=self.gt_select)


DEFAULT_PROTOCOL = Protocol(
    name="jvmr", reference="2D-TAN's NMS 0.5 then R@{1,5}, counting IoU >= t as TVR / moment_detr / UnLoc do")


# ---------------------------------------------------------------------------
# Named protocols (parity with the field's reference evaluators)

#: moment_detr's ``np.linspace(0.5, 0.95, 10)`` rounded as ``float(f"{e:.2f}")``.
MOMENT_DETR_IOU_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))

TVR_TASK_TYPES = ("VCMR", "SVMR", "VR")
TVR_DESC_TYPES = ("v", "t", "vt")
TVR_IOU_THRESHOLDS = (0.5, 0.7)
TVR_RECALL_TOPKS = (1, 5, 10, 100)
TVR_MAX_PRED_PER_QUERY = 100
#: A GT row with at least this many windows (DiDeMo) needs a prediction that
#: matches at least ``TVR_MIN_OVERLAPS`` of them; otherwise 1.
TVR_MULTI_WINDOW_MIN = 4
TVR_MIN_OVERLAPS = 2
#: moment_detr's length ranges of GT windows (seconds, ``min < length <= max``);
#: ``"full"`` keeps every window.
MOMENT_DETR_LENGTH_RANGES = (("short", 0.0, 10.0), ("middle", 10.0, 30.0), ("long", 30.0, 150.0),
                             ("full", 0.0, 150.0))

PROTOCOLS: dict[str, Protocol] = {
    # The library default (the embedded benchmark's tables): 2D-TAN's NMS then
    # top-5, with the >= of the other evaluators and earlier-first ties.
    "jvmr": DEFAULT_PROTOCOL,
    # microsoft/2D-TAN lib/core/eval.py (eval / nms / iou) with the candidate
    # ranking of moment_localization/test.py (np.argsort(score)[::-1]).
    "2dtan": Protocol(
        name="2dtan", ks=(1, 5), iou_thresholds=(0.1, 0.3, 0.5, 0.7), iou_comparison=">",
        nms_threshold=0.5, tie_break="later", rank_by="score", iou_union="hull",
        reference="microsoft/2D-TAN lib/core/eval.py"),
    # jayleicn/moment_detr standalone_eval/eval.py (eval_submission: compute_mr_r1
    # and compute_mr_ap with max_pred_windows=10, over the short / middle / long /
    # full GT length ranges).
    "moment_detr": Protocol(
        name="moment_detr", ks=(1,), iou_thresholds=MOMENT_DETR_IOU_THRESHOLDS, iou_comparison=">=",
        nms_threshold=None, tie_break="earlier", rank_by="given", iou_union="hull", gt_select="exact",
        map_iou_thresholds=MOMENT_DETR_IOU_THRESHOLDS, max_pred_windows=10, output="moment_detr",
        reference="jayleicn/moment_detr standalone_eval/eval.py"),
    # jayleicn/TVRetrieval standalone_eval/eval.py: R@{1,5,10,100} over the first
    # 100 predictions as given, IoU >= 0.5 / 0.7, no NMS. On per-query windows
    # (the video known) this is its SVMR task; corpus submissions (VCMR / VR)
    # go through evaluate_tvr (``jvmr.evaluate --protocol=tvr``).
    "tvr": Protocol(
        name="tvr", ks=TVR_RECALL_TOPKS, iou_thresholds=TVR_IOU_THRESHOLDS, iou_comparison=">=",
        nms_threshold=None, tie_break="earlier", rank_by="given", max_pred_windows=TVR_MAX_PRED_PER_QUERY,
        iou_union="hull", output="tvr", reference="jayleicn/TVRetrieval standalone_eval/eval.py"),
}

#: The protocol each dataset's published tables use (``dataset.protocol`` when empty).
DATASET_PROTOCOLS: dict[str, str] = {
    "synthetic": "jvmr",
    "synthetic_corpus": "tvr",
    "charades_sta": "2dtan",
    "activitynet_captions": "2dtan",
    "tacos": "2dtan",
    "tvr": "tvr",
}


def protocol_for_dataset(dataset: str, protocol: str = "") -> Protocol:
    """``protocol`` if given, else the protocol of ``dataset`` (``DATASET_PROTOCOLS``)."""
    if protocol:
        return get_protocol(protocol)
    if dataset not in DATASET_PROTOCOLS:
        raise ValueError(f"no default protocol for dataset {dataset!r}; set dataset.protocol to one of "
                         f"{sorted(PROTOCOLS)}")
    return PROTOCOLS[DATASET_PROTOCOLS[dataset]]


def get_protocol(name: str | Protocol) -> Protocol:
    """Looks up a named protocol.

    Args:
      name: A key of ``PROTOCOLS`` (``'jvmr'``, ``'2dtan'``, ``'moment_detr'``
        or ``'tvr'``); a ``Protocol`` instance is returned unchanged.

    Returns:
      The ``Protocol``.

    Raises:
      ValueError: For an unknown name (the message lists the known ones).
    """
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}") from None
