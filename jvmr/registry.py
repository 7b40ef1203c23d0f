"""The models jvmr knows, keyed by ``config.model.name``.

Each entry pairs a linen module with the pure functions the shared training
loop needs:
  * ``loss_fn(outputs, batch, *, step, rng, axis_name, **config.loss) -> (loss, metrics)``
    (``step``: the training step; ``rng``: a key for losses that sample, e.g. negatives;
    ``axis_name``: the pmap axis, for losses that look across devices, e.g. global negatives);
  * ``predict_fn(outputs, batch) -> (spans [B, N, 2], scores [B, N])``, spans as a
    fraction of the video duration; the host turns them into seconds, applies the
    evaluation protocol (NMS, top-k) and computes recall;
  * ``evidence_fn(outputs, batch) -> {"curves": {name: [B, T]}, "maps": {name: [B, T, T]},
    "attention": {name: [B, T, L]}}`` (each block optional): what pictures of a prediction show
    per clip of the model's grid (``jvmr.visualize``);
  * ``inputs(model_config) -> groups``: the optional batch groups the model reads
    (``jvmr.data.pipeline.INPUT_GROUPS``); the pipeline builds only those;
  * ``needs_labels(config) -> bool``: whether its training batches carry the ground-truth spans
    (False: weak supervision; the pipeline leaves them out, so no loss can read them);
  * ``evaluator``: how the training loop evaluates it by default (``config.eval.evaluator``
    overrides): ``'moment'`` (each query in its own video, ``predict_fn``) or ``'corpus'``
    (every query against its split's whole corpus: ``jvmr.retrieval``, for models with
    ``encode_query`` / ``encode_context`` methods).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import ml_collections

from jvmr.data import text
from jvmr.models import cimha, cmin, ms2d, reloclnet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    module: type[nn.Module]
    loss_fn: Callable[..., Any]
    predict_fn: Callable[..., Any]
    evidence_fn: Callable[..., Any]
    inputs: Callable[[ml_collections.ConfigDict], tuple[str, ...]] = lambda model_config: ()
    evaluator: str = "moment"
    needs_labels: Callable[[ml_collections.ConfigDict], bool] = lambda config: True


MODELS: dict[str, ModelSpec] = {
    "cmin": ModelSpec(cmin.CMIN, cmin.loss_fn, cmin.predict_fn, cmin.evidence_fn,
                      lambda model_config: ("query_graph",)),
    "cimha": ModelSpec(cimha.CIMHA, cimha.loss_fn, cimha.predict_fn, cimha.evidence_fn),
    "reloclnet": ModelSpec(reloclnet.ReLoCLNet, reloclnet.loss_fn, reloclnet.predict_fn, reloclnet.evidence_fn,
                           reloclnet.model_inputs, evaluator="corpus"),
    "ms2d": ModelSpec(ms2d.MS2D, ms2d.loss_fn, ms2d.predict_fn, ms2d.evidence_fn, ms2d.model_inputs,
                      needs_labels=ms2d.needs_labels),
}


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def create_model(model_config: ml_collections.ConfigDict, vocab_size: int) -> nn.Module:
    """Instantiates the module named by ``model_config.name`` with the block's other keys.

    ``vocab_size`` and the dependency-label count are passed to the modules that
    declare them (``vocab_size``, ``num_dep_labels``); every key of the block
    must be an attribute of the module.
    """
    spec = get_model_spec(model_config.name)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v)
              for k, v in model_config.to_dict().items() if k != "name"}
    fields = {f.name for f in dataclasses.fields(spec.module)}
    data_kwargs = {"vocab_size": vocab_size, "num_dep_labels": text.NUM_DEPENDENCY_LABELS}
    kwargs.update({k: v for k, v in data_kwargs.items() if k in fields})
    return spec.module(**kwargs)


def inference_functions(model: nn.Module, spec: ModelSpec) -> dict[str, Callable[..., Any]]:
    """``predict(params, batch) -> (spans, scores)`` (``predict_fn`` on the deterministic forward pass) and
    ``explain(params, batch) -> (spans, scores, evidence)`` (the same pass, with ``evidence_fn``'s)."""
    def predict(params, batch):
        return spec.predict_fn(model.apply({"params": params}, batch, train=False), batch)

    def explain(params, batch):
        outputs = model.apply({"params": params}, batch, train=False)
        return (*spec.predict_fn(outputs, batch), spec.evidence_fn(outputs, batch))

    return {"predict": predict, "explain": explain}
