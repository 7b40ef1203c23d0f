"""Evaluation metrics for temporal sentence grounding (numpy only).

Everything works on continuous spans ``[start, end]`` in seconds; nothing here
imports jax or tensorflow, so the package can be used by the training loop, by
tools and by a standalone evaluator alike.

Default protocol (``DEFAULT_PROTOCOL``, what ``evaluate_predictions`` does by
default):

1. Greedy temporal NMS over each query's scored candidates with threshold 0.5
   (a candidate is suppressed if its IoU with an already kept one is
   ``> 0.5``), keeping ``max(ks)`` spans (2D-TAN ``lib/core/eval.py``).
2. ``R@k,IoU=t``: a query is correct if any of its top-k kept spans has
   IoU ``>= t`` with any of its valid ground-truth spans (TVR / moment_detr /
   UnLoc comparison; 2D-TAN itself uses the strict ``>``).
3. ``mIoU``: mean over queries of the best IoU between the top-1 span and the
   ground-truth spans.

All values are percentages. The field's evaluators differ in a few knobs, which
are therefore parameters everywhere: ``iou_comparison`` (``'>='`` or ``'>'``),
``nms_threshold`` (``None`` = no NMS, plain top-k by score), the IoU's union
(``'exact'`` ``len_a + len_b - inter`` or the ``'hull'`` ``max(e) - min(s)``:
equal on paper whenever the spans overlap, but they round apart, and real
predictions sit on thresholds), the order of score ties, and whether rows are
re-ranked by score or taken as given. A ``Protocol`` bundles them with the
``ks`` and IoU thresholds. No epsilon is added to comparisons: an IoU that is
exactly ``t`` counts for ``'>='`` and not for ``'>'``.

NMS and top-k break score ties deterministically by candidate index (earlier
first). 2D-TAN's ``np.argsort(...)[::-1]`` puts the *later* flat index first;
the ``'2dtan'`` protocol (``tie_break='later'``) reverses the candidate order
before its stable ranking to match.

Named protocols live in ``PROTOCOLS`` (``get_protocol(name)``): ``'jvmr'`` (the
default above), ``'2dtan'`` (microsoft/2D-TAN ``lib/core/eval.py``),
``'moment_detr'`` (jayleicn/moment_detr ``standalone_eval/eval.py``: R1 of the
first row plus ActivityNet-style mAP, per GT length range) and ``'tvr'``
(jayleicn/TVRetrieval ``standalone_eval/eval.py``). ``evaluate_candidates``
scores a model's candidates under one (the training loop), ``evaluate_windows``
ragged per-query windows, ``evaluate_tvr`` a TVR submission; ``jvmr.evaluate``
is the command-line front end.

The package is split by concern, each module importing only those listed
before it: ``spans`` (IoU, NMS, ranking, padding), ``recall`` (R@k, mIoU,
``evaluate_predictions``), ``protocols`` (``Protocol``, ``PROTOCOLS``, the
reference evaluators' constants), ``moment_detr`` and ``tvr`` (the
reproductions of those reference evaluators), ``evaluation`` (applying a
protocol: ``evaluate_candidates`` / ``evaluate_split`` / ``evaluate_windows``
/ ``flat_metrics``) and ``io`` (prediction / ground-truth / TVR submission
files, the log table). Every public name, and the private ``_tvr_desc_id``
that ``jvmr.retrieval`` uses, is re-exported here, so ``from jvmr import
metrics; metrics.X`` works as it did when this was one module.
"""


from jvmr.metrics.evaluation import (evaluate_candidates, evaluate_split, evaluate_windows, flat_metrics,
                                     primary_metric_key, rank_candidates, tvr_desc_types, tvr_type_headlines)
from jvmr.metrics.io import (_tvr_desc_id, format_metrics_table, write_ground_truth_jsonl, write_predictions_jsonl,
                             write_tvr_files)
from jvmr.metrics.moment_detr import (batched_detection_average_precision, detection_average_precision,
                                      interpolated_average_precision, moment_detr_result)
from jvmr.metrics.protocols import (DATASET_PROTOCOLS, DEFAULT_PROTOCOL, MOMENT_DETR_IOU_THRESHOLDS,
                                    MOMENT_DETR_LENGTH_RANGES, PROTOCOL_OUTPUTS, PROTOCOLS, TVR_DESC_TYPES,
                                    TVR_IOU_THRESHOLDS, TVR_MAX_PRED_PER_QUERY, TVR_MIN_OVERLAPS,
                                    TVR_MULTI_WINDOW_MIN, TVR_RECALL_TOPKS, TVR_TASK_TYPES, Protocol, get_protocol,
                                    protocol_for_dataset)
from jvmr.metrics.recall import (DEFAULT_IOU_THRESHOLDS, DEFAULT_KS, EvaluationResult, best_gt_iou,
                                 evaluate_predictions, recall_at_k, recall_key)
from jvmr.metrics.spans import (IOU_COMPARISONS, NmsResult, batched_temporal_nms, iou_passes, pad_rows, pad_spans,
                                pairwise_temporal_iou, temporal_iou, temporal_nms)
from jvmr.metrics.tvr import evaluate_tvr, evaluate_tvr_task, tvr_correct, tvr_temporal_iou

__all__ = [
    # spans
    "IOU_COMPARISONS", "NmsResult", "batched_temporal_nms", "iou_passes", "pad_rows", "pad_spans",
    "pairwise_temporal_iou", "temporal_iou", "temporal_nms",
    # recall
    "DEFAULT_IOU_THRESHOLDS", "DEFAULT_KS", "EvaluationResult", "best_gt_iou", "evaluate_predictions",
    "recall_at_k", "recall_key",
    # protocols
    "DATASET_PROTOCOLS", "DEFAULT_PROTOCOL", "MOMENT_DETR_IOU_THRESHOLDS", "MOMENT_DETR_LENGTH_RANGES",
    "PROTOCOL_OUTPUTS", "PROTOCOLS", "TVR_DESC_TYPES", "TVR_IOU_THRESHOLDS", "TVR_MAX_PRED_PER_QUERY",
    "TVR_MIN_OVERLAPS", "TVR_MULTI_WINDOW_MIN", "TVR_RECALL_TOPKS", "TVR_TASK_TYPES", "Protocol", "get_protocol",
    "protocol_for_dataset",
    # moment_detr
    "batched_detection_average_precision", "detection_average_precision", "interpolated_average_precision",
    "moment_detr_result",
    # tvr
    "evaluate_tvr", "evaluate_tvr_task", "tvr_correct", "tvr_temporal_iou",
    # evaluation
    "evaluate_candidates", "evaluate_split", "evaluate_windows", "flat_metrics", "primary_metric_key",
    "rank_candidates", "tvr_desc_types", "tvr_type_headlines",
    # io
    "_tvr_desc_id", "format_metrics_table", "write_ground_truth_jsonl", "write_predictions_jsonl",
    "write_tvr_files",
]
