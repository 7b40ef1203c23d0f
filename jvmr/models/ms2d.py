"""MS-2D: multi-scale 2D representation learning for weakly supervised moment retrieval (Li et al., ICPR 2020).

No official code exists; the seed's equations (003_01e8cb29bd2b3899) are the spec, 2D-TAN
and the semantic completion network are the nearest relatives (methods.md 1(d)). Weak
supervision: training reads (video, sentence) pairs only, never a boundary
(``loss.supervision='weak'``; the pipeline does not even build the span keys, ``needs_labels``).
Notation: T clips, L words, d hidden, S scales of strides r_j (n_j = T / r_j cells a side),
K proposals per scale.

    text      f^T = the last valid state of an LSTM over the word vectors           [d]
    clips     f^S = ReLU(W_v x_t + b), then scale j max-pools windows of r_j clips [n_j, d]
    2D maps   F^j[x, y] = maxpool(f^S_x .. f^S_y), x <= y  (jvmr.models.maps2d)     [n_j, n_j, d]
    fusion    F_cro = normalise((W^T f^T 1^T) . (W^M F^M)), L2 over channels per cell
    map convs a stack of 2D convolutions (ReLU) over each map, re-masked after every layer,
              so that neighbouring moments inform each other (per scale, or shared)
    scores    p = sigmoid(w . F_cro'[x, y] + b) per cell
    proposals the K cells of highest p of each scale (S x K); with ``proposal_nms`` < 1 picked greedily,
              each with IoU <= proposal_nms with those already picked (otherwise the K best are
              neighbours of one cell and their pseudo labels compare near-copies)

Moments caption module: a 2-layer LSTM decoder, teacher-forced, reads each proposal's
feature (``caption_input``: its fused cell F_cro after the map convolutions, as the seed
writes; or its video cell W^M F, so that the query cannot leak into its own reconstruction) and the previous
word, and predicts the query's next word:

    L_rec = -1 / (S K L) sum_k sum_l log P(w*_l | F^k, h^2_{l-1}, w_<l).

Pseudo labels (per scale j, over its K proposals): with LL_k = sum_l log P(w*_l | F^k, ...),

    l_k = LL_k / sum_k' LL_k'   (in (0, 1); smaller = better reconstruction),
    y_k = 0 if l_k >= l_max,  1 - l_k if l_min <= l_k < l_max,  1 if l_k < l_min,

and the reconstruction-guided BCE on the proposals' p (y without gradient):

    L_rg-bce = -1 / (S K) sum_j sum_k y_k log p_k + (1 - y_k) log(1 - p_k).

L = rec_weight L_rec + bce_weight L_rg-bce. Ablations: ``loss.use_pseudo_labels=False``
(with ``model.mismatched_pairs=True``) replaces the pseudo labels by a MIL ranking of the
video-level score (the best cell) of each pair against mismatched pairs of the batch
(``mismatched_pairs`` with the pseudo labels adds the ranking to them: mil_weight L_mil);
``scales=(1,)`` is the single-scale model; ``loss.supervision='full'`` is the fully
supervised upper reference (2D-TAN's scaled-IoU BCE on every cell: target
clip((IoU - min_iou) / (max_iou - min_iou), 0, 1)).

Switches beyond the seed, from its relatives (methods.md 1(d)), off by default unless the config says so:
``model.caption_word_mask`` (SCN's masked words: in training the decoder reads a mask vector in place of
that share of the words, so that it must reconstruct from the video); ``model.video_negative`` (CPL's hard
negative: the query is also reconstructed from the whole video, and the best proposal must beat it by
``loss.video_negative_margin`` nats per word, ``loss.video_negative_weight`` times the hinge); and
``loss.pseudo_targets='iou_map'`` (the best-reconstructed proposal as a pseudo ground truth for 2D-TAN's
scaled-IoU BCE on every cell, instead of the rule on the proposals).
Inference ranks every valid cell of every scale by p.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jvmr.models import layers, maps2d
from jvmr.models.layers import (WordEmbedding, constrain, dense, l2_normalize, mask_fill, partitioned, sequence_lengths,
                                weighted_mean)
from jvmr.models.spans import MASKED_SCORE, nms_top_k, temporal_iou

Array = jax.Array

CAPTION_INPUTS = ("fused", "video")
SUPERVISIONS = ("weak", "full")
PSEUDO_TARGETS = ("proposals", "iou_map")
default_embed_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def last_state(states: Array, mask: Array) -> Array:
    """The state at each sequence's last valid step: states [B, L, d], mask [B, L] (prefix) -> [B, d]."""
    last = jnp.maximum(sequence_lengths(mask) - 1, 0)
    return jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0]


class MapConvs(nn.Module):
    """2D convolutions (SAME padding, ReLU) over a masked map [B, n, n, c]; masked cells stay zero, so a
    valid cell only ever reads valid neighbours' values (and zeros)."""

    channels: int
    num_layers: int
    kernel_size: int

    @nn.compact
    def __call__(self, x: Array, cell_mask: Array) -> Array:
        for i in range(self.num_layers):
            x = nn.relu(nn.Conv(self.channels, (self.kernel_size, self.kernel_size), padding="SAME",
                                kernel_init=partitioned(nn.initializers.lecun_normal(), (None, None, None, "conv_out")),
                                bias_init=partitioned(nn.initializers.zeros_init(), ("conv_out",)),
                                name=f"conv_{i}")(x))
            x = constrain(x, ("batch", None, None, "conv_out"))
            x = x * cell_mask[..., None]
        return x


class CaptionDecoder(nn.Module):
    """Two-layer LSTM decoder, teacher-forced: step l reads [proposal feature; word l - 1] (a learned
    start vector at l = 0) and scores the vocabulary for word l. With ``word_mask_rate`` > 0, in training,
    each read word is replaced by a learned mask vector with that probability (the same words for every
    proposal of a query), as the semantic completion network masks a third of the words, so that the
    reconstruction must come from the video rather than from the sentence's own prefix.

    Args of ``__call__``: features [B, P, c] (P proposals), words [B, L, e] (the query's word vectors),
    tokens [B, L] (the targets), word_mask [B, L]. Returns log P(w*_l | ...) [B, P, L] (0 at padded words).
    """

    vocab_size: int
    hidden: int
    num_layers: int = 2
    word_mask_rate: float = 0.0

    @nn.compact
    def __call__(self, features: Array, words: Array, tokens: Array, word_mask: Array,
                 deterministic: bool = True) -> Array:
        b, p, _ = features.shape
        length, e = words.shape[1], words.shape[2]
        start = self.param("start_word", nn.initializers.normal(0.1), (e,))
        previous = jnp.concatenate([jnp.broadcast_to(start, (b, 1, e)), words[:, :-1]], axis=1)  # [B, L, e]
        if self.word_mask_rate > 0:
            mask_word = self.param("mask_word", nn.initializers.normal(0.1), (e,))
        if self.word_mask_rate > 0 and not deterministic:
            masked = jax.random.bernoulli(self.make_rng("dropout"), self.word_mask_rate, (b, length))
            masked = masked & (jnp.arange(length) > 0)[None]  # the start vector is not a word
            previous = jnp.where(masked[..., None], mask_word, previous)
        inputs = jnp.concatenate([jnp.broadcast_to(features[:, :, None], (b, p, length, features.shape[-1])),
                                  jnp.broadcast_to(previous[:, None], (b, p, length, e))], axis=-1)
        x = inputs.reshape(b * p, length, -1)
        for i in range(self.num_layers):
            x = layers.Recurrence(self.hidden, "lstm", name=f"lstm_{i}")(x)
        logits = dense(self.vocab_size, ("embed", "vocab"), name="output")(x).reshape(b, p, length, self.vocab_size)
        log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None, :, None], axis=-1)[..., 0]
        return log_p * (word_mask > 0)[:, None, :]


class MS2D(nn.Module):
    """Multi-scale 2D temporal network with the moments caption module (see the module docstring).

    Attributes:
      vocab_size, word_dim: the word table (GloVe rows when the dataset has them).
      hidden_size: d (text LSTM, clip projection, fused maps, map convolutions).
      scales: strides r_j of the N_s scales (the clip grid must be a multiple of each).
      dense_lengths: sparse cell layout of each map (:func:`maps2d.sparse_cells`; 0 = every cell).
      map_conv_layers, map_conv_kernel: the 2D convolution stack; share_map_convs: one stack for all scales.
      num_proposals: K cells per scale sent to the caption module.
      proposal_nms: the K cells are picked greedily, each with IoU <= this with the picked ones (1 = top K).
      caption_input: 'fused' (F_cro, the seed) or 'video' (the cell's W^M F, without the query).
      caption_hidden: units of each decoder LSTM layer.
      caption_word_mask: in training, the share of the decoder's read words replaced by a mask vector (SCN).
      use_caption: the caption module (off: no reconstruction; MIL or full supervision only).
      mismatched_pairs: also score every video with the next example's query (the MIL ranking's negatives).
      video_negative: also reconstruct the query from the whole video (the longest cell of the coarsest scale,
        read as ``caption_input`` says): the negative of ``loss.video_negative_weight``.
      dropout: on the word vectors and clip features.
      num_candidates: cells returned for evaluation (best p first).
      freeze_embeddings, embedding_init: the word table.
    """

    vocab_size: int
    word_dim: int = 300
    hidden_size: int = 256
    scales: tuple[int, ...] = (1, 2, 4)
    dense_lengths: int = 0
    map_conv_layers: int = 2
    map_conv_kernel: int = 3
    share_map_convs: bool = False
    num_proposals: int = 8
    proposal_nms: float = 1.0
    caption_input: str = "fused"
    caption_hidden: int = 256
    caption_word_mask: float = 0.0
    use_caption: bool = True
    mismatched_pairs: bool = False
    video_negative: bool = False
    dropout: float = 0.1
    num_candidates: int = 100
    freeze_embeddings: bool = False
    embedding_init: Callable[..., Any] = default_embed_init

    def _check(self, num_clips: int) -> None:
        if self.caption_input not in CAPTION_INPUTS:
            raise ValueError(f"caption_input must be one of {CAPTION_INPUTS}, got {self.caption_input!r}")
        if not self.scales or any(r < 1 or num_clips % r for r in self.scales):
            raise ValueError(f"the clip grid ({num_clips}) must be a multiple of every scale stride {self.scales}")
        if self.num_proposals < 1 or self.num_candidates < 1:
            raise ValueError("num_proposals and num_candidates must be >= 1")

    @nn.compact
    def __call__(self, batch: Mapping[str, Array], *, train: bool = False) -> dict[str, Array]:
        det = not train
        vmask = (batch["video_mask"] > 0).astype(jnp.float32)
        qmask = (batch["query_mask"] > 0).astype(jnp.float32)
        self._check(batch["video_feats"].shape[1])
        words = WordEmbedding(self.vocab_size, self.word_dim, embedding_init=self.embedding_init,
                              freeze=self.freeze_embeddings, dropout_rate=self.dropout, name="word_embed")(
            batch["query_tokens"], qmask, deterministic=det)
        states = layers.Recurrence(self.hidden_size, "lstm", name="query_rnn")(words, sequence_lengths(qmask))
        sentence = last_state(states, qmask)  # f^T [B, d]
        clips = layers.Dropout(self.dropout)(batch["video_feats"], deterministic=det)
        clips = mask_fill(nn.relu(nn.Dense(self.hidden_size, name="clip_proj")(clips)), vmask)  # f^S

        text = nn.Dense(self.hidden_size, name="text_fusion")(sentence)[:, None, None, :]  # W^T f^T
        shared = MapConvs(self.hidden_size, self.map_conv_layers, self.map_conv_kernel, name="map_convs") \
            if self.share_map_convs else None
        scorer = nn.Dense(1, name="scorer")
        video_proj = nn.Dense(self.hidden_size, name="video_fusion")  # W^M (shared by the scales)
        out: dict[str, Array] = {"video_mask": vmask}
        b = vmask.shape[0]
        logits, cell_masks, spans, fused_maps, video_maps, mismatched, score_maps = [], [], [], [], [], [], []
        for j, stride in enumerate(self.scales):
            seq, seq_mask = maps2d.pool_sequence(clips, vmask, stride)
            fmap, cell_mask = maps2d.moment_map(seq, seq_mask)  # [B, n, n, d], [B, n, n]
            n = seq.shape[1]
            cell_mask = cell_mask * jnp.asarray(maps2d.sparse_cells(n, self.dense_lengths), jnp.float32)[None]
            video = video_proj(fmap) * cell_mask[..., None]
            convs = shared if shared is not None else MapConvs(
                self.hidden_size, self.map_conv_layers, self.map_conv_kernel, name=f"map_convs_{j}")

            def score(text_rows, video=video, cell_mask=cell_mask, convs=convs):
                fused = l2_normalize(text_rows * video) * cell_mask[..., None]  # F_cro
                fused = convs(fused, cell_mask)
                return mask_fill(scorer(fused)[..., 0], cell_mask).reshape(b, n * n), fused

            cell_logits, fused = score(text)
            logits.append(cell_logits)
            score_maps.append((cell_logits.reshape(b, n, n), cell_mask))
            if self.mismatched_pairs:  # video i with query i + 1 (MIL negatives)
                mismatched.append(score(jnp.roll(text, -1, axis=0))[0])
            cell_masks.append(cell_mask.reshape(b, n * n))
            spans.append(maps2d.cell_spans(vmask, n, stride).reshape(b, n * n, 2))
            fused_maps.append(fused.reshape(b, n * n, -1))
            video_maps.append(video.reshape(b, n * n, -1))
        out["cell_logits"] = jnp.concatenate(logits, axis=1)  # [B, C] every cell of every scale
        # Each scale's 2D map (x = start cell, y = end cell) and its mask, for pictures (evidence_fn).
        out["score_maps"] = tuple(score_maps)
        if self.mismatched_pairs:
            out["mismatched_cell_logits"] = jnp.concatenate(mismatched, axis=1)  # [B, C]: query (i + 1) mod B
        out["cell_mask"] = jnp.concatenate(cell_masks, axis=1)
        out["cell_spans"] = jnp.concatenate(spans, axis=1)  # [B, C, 2] fractions of the valid clips
        sizes = [lg.shape[1] for lg in logits]

        # Proposals: the K most probable valid cells of each scale, optionally after NMS (no gradient).
        picks, pick_masks, feats = [], [], []
        offset = 0
        k = min(self.num_proposals, min(sizes))  # one K for every scale (a coarse map may hold fewer cells)
        for j, size in enumerate(sizes):
            ranked = jnp.where(cell_masks[j] > 0, jax.lax.stop_gradient(logits[j]), -jnp.inf)
            index, kept = nms_top_k(ranked, spans[j].reshape(b, size, 2), k, self.proposal_nms)
            picks.append(index + offset)
            pick_masks.append(kept)
            source = fused_maps[j] if self.caption_input == "fused" else video_maps[j]
            feats.append(jnp.take_along_axis(source, index[..., None], axis=1))
            offset += size
        out["proposals"] = jnp.stack(picks, axis=1)  # [B, S, K] indices into the cells
        out["proposal_mask"] = jnp.stack(pick_masks, axis=1)  # [B, S, K]
        if self.use_caption:
            b, s, k = out["proposals"].shape
            feats = jnp.concatenate(feats, axis=1)  # [B, S K, c]
            if self.video_negative:  # the longest valid cell of the coarsest map starting at clip 0: the whole video
                source = fused_maps[-1] if self.caption_input == "fused" else video_maps[-1]
                starts, ends = spans[-1][..., 0].reshape(b, -1), spans[-1][..., 1].reshape(b, -1)
                whole = jnp.argmax(jnp.where((cell_masks[-1] > 0) & (starts == 0), ends, -1.0), axis=1)
                feats = jnp.concatenate([feats, jnp.take_along_axis(source, whole[:, None, None], axis=1)], axis=1)
            log_p = CaptionDecoder(self.vocab_size, self.caption_hidden, word_mask_rate=self.caption_word_mask,
                                   name="caption")(feats, words, batch["query_tokens"], qmask,
                                                   deterministic=det)  # [B, S K (+ 1), L]
            out["caption_log_probs"] = log_p[:, :s * k].reshape(b, s, k, -1)
            if self.video_negative:
                out["video_caption_log_probs"] = log_p[:, s * k]  # [B, L]
        out["query_mask"] = qmask

        scores = jnp.where(out["cell_mask"] > 0, jax.nn.log_sigmoid(out["cell_logits"]), MASKED_SCORE)
        top, index = jax.lax.top_k(scores, min(self.num_candidates, scores.shape[1]))
        out["candidate_scores"] = top
        out["candidate_spans"] = jnp.where(jnp.isfinite(top)[..., None],
                                           jnp.take_along_axis(out["cell_spans"], index[..., None], axis=1), 0.0)
        return out


# ----------------------------------------------------------------------------- losses


def pseudo_labels(log_likelihood: Array, mask: Array, l_min: float, l_max: float) -> Array:
    """y [..., K] from the reconstruction log-likelihoods LL [..., K] of one scale's proposals (mask [..., K]):
    l_k = LL_k / sum_k' LL_k' over the valid proposals, then the seed's rule (0 / 1 - l / 1); 0 where masked."""
    ll = jnp.where(mask > 0, log_likelihood, 0.0)
    total = jnp.sum(ll, axis=-1, keepdims=True)
    share = ll / jnp.where(total < 0, total, -1.0)  # both negative: l in [0, 1], summing to 1
    y = jnp.where(share >= l_max, 0.0, jnp.where(share >= l_min, 1.0 - share, 1.0))
    return jnp.where(mask > 0, y, 0.0)


def binary_cross_entropy(logits: Array, targets: Array) -> Array:
    """-(y log sigmoid(z) + (1 - y) log sigmoid(-z)), elementwise."""
    return -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))


def scaled_iou_targets(spans: Array, gt_span: Array, min_iou: float, max_iou: float) -> Array:
    """2D-TAN's targets clip((IoU - min_iou) / (max_iou - min_iou), 0, 1) of spans [B, C, 2] against gt [B, 2]."""
    iou = temporal_iou(spans, gt_span[:, None, :])
    return jnp.clip((iou - min_iou) / (max_iou - min_iou), 0.0, 1.0)


def loss_fn(
    outputs: Mapping[str, Array],
    batch: Mapping[str, Array],
    *,
    step: Array | None = None,
    rng: Array | None = None,
    axis_name: str | None = None,
    supervision: str = "weak",
    use_pseudo_labels: bool = True,
    rec_weight: float = 1.0,
    bce_weight: float = 1.0,
    mil_weight: float = 1.0,
    mil_margin: float = 0.5,
    l_min: float = 0.1,
    l_max: float = 0.2,
    min_iou: float = 0.5,
    max_iou: float = 1.0,
    pseudo_targets: str = "proposals",
    video_negative_weight: float = 1.0,
    video_negative_margin: float = 0.2,
) -> tuple[Array, dict[str, Array]]:
    """The MS-2D objective (module docstring). 'weak': rec_weight L_rec + bce_weight L_rg-bce (pseudo labels
    from the reconstruction), or with ``use_pseudo_labels=False`` rec_weight L_rec + mil_weight L_mil, the hinge
    max(0, margin - s(v_i, q_i) + s(v_i, q_{i+1})) on the video-level score s = the best cell's logit (pairs of
    one video are skipped, when the batch has ``video_index``); the ranking is added to the pseudo labels' terms
    whenever the model scored mismatched pairs. ``pseudo_targets='iou_map'`` replaces the rule on the proposals by
    the scaled-IoU BCE on every cell against the best-reconstructed proposal; when the model reconstructed the
    whole video (``video_negative``), video_negative_weight max(0, margin - (LL_best - LL_video) / words) is added.
    'full': 2D-TAN's scaled-IoU BCE over every valid cell, the only term that reads ``gt_span``.
    Under pmap (``axis_name``) every mean is over the global batch. Returns (loss, metrics)."""
    del step, rng
    weighted_mean = functools.partial(layers.weighted_mean, axis_name=axis_name)
    if supervision not in SUPERVISIONS:
        raise ValueError(f"loss.supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    examples = batch["example_mask"].astype(jnp.float32)
    logits, cells = outputs["cell_logits"], outputs["cell_mask"]
    metrics: dict[str, Array] = {}
    total = jnp.zeros((), jnp.float32)
    if supervision == "full":
        targets = scaled_iou_targets(outputs["cell_spans"], batch["gt_span"].astype(jnp.float32), min_iou, max_iou)
        metrics["iou_bce_loss"] = weighted_mean(binary_cross_entropy(logits, targets), cells * examples[:, None])
        total = total + metrics["iou_bce_loss"]
    else:
        if "caption_log_probs" in outputs:
            log_p = outputs["caption_log_probs"]  # [B, S, K, L]
            words = outputs["query_mask"][:, None, None, :] * outputs["proposal_mask"][..., None]
            metrics["reconstruction_loss"] = weighted_mean(-log_p, words * examples[:, None, None, None])
            total = total + rec_weight * metrics["reconstruction_loss"]
        if use_pseudo_labels or "video_caption_log_probs" in outputs:
            if "caption_log_probs" not in outputs:
                raise ValueError("pseudo labels and the video negative need the caption module (model.use_caption)")
            likelihood = jnp.sum(outputs["caption_log_probs"], axis=-1)  # LL_k [B, S, K]
            b, s, k = likelihood.shape
            flat_mask = outputs["proposal_mask"].reshape(b, s * k)
            best = jnp.argmax(jnp.where(flat_mask > 0, likelihood.reshape(b, s * k), -jnp.inf), axis=1)  # [B]
            best_cell = jnp.take_along_axis(outputs["proposals"].reshape(b, s * k), best[:, None], axis=1)[:, 0]
            best_span = jnp.take_along_axis(outputs["cell_spans"], best_cell[:, None, None], axis=1)[:, 0]  # [B, 2]
            metrics["pseudo_span_length"] = weighted_mean(best_span[:, 1] - best_span[:, 0], examples)
        if use_pseudo_labels:
            if pseudo_targets not in PSEUDO_TARGETS:
                raise ValueError(f"loss.pseudo_targets must be one of {PSEUDO_TARGETS}, got {pseudo_targets!r}")
            if pseudo_targets == "proposals":  # the seed: the rule on the shares, BCE on the proposals' p
                y = jax.lax.stop_gradient(pseudo_labels(likelihood, outputs["proposal_mask"], l_min, l_max))
                picked = jnp.take_along_axis(logits, outputs["proposals"].reshape(b, s * k), axis=1).reshape(b, s, k)
                weights = outputs["proposal_mask"] * examples[:, None, None]
                metrics["rg_bce_loss"] = weighted_mean(binary_cross_entropy(picked, y), weights)
                metrics["pseudo_label_mean"] = weighted_mean(y, weights)
            else:  # the best-reconstructed proposal as a pseudo ground truth for 2D-TAN's scaled-IoU BCE
                y = jax.lax.stop_gradient(scaled_iou_targets(outputs["cell_spans"], best_span, min_iou, max_iou))
                weights = cells * examples[:, None]
                metrics["rg_bce_loss"] = weighted_mean(binary_cross_entropy(logits, y), weights)
                metrics["pseudo_label_mean"] = weighted_mean(y, weights)
            total = total + bce_weight * metrics["rg_bce_loss"]
        if "video_caption_log_probs" in outputs:  # the best proposal must out-reconstruct the whole video
            words_per_query = jnp.maximum(jnp.sum(outputs["query_mask"], axis=-1), 1.0)
            best_ll = jnp.take_along_axis(likelihood.reshape(b, s * k), best[:, None], axis=1)[:, 0]
            gap = (best_ll - jnp.sum(outputs["video_caption_log_probs"], axis=-1)) / words_per_query
            metrics["video_negative_loss"] = weighted_mean(jax.nn.relu(video_negative_margin - gap), examples)
            total = total + video_negative_weight * metrics["video_negative_loss"]
        if not use_pseudo_labels and "mismatched_cell_logits" not in outputs:
            raise ValueError("the MIL ranking needs model.mismatched_pairs=True")
        if "mismatched_cell_logits" in outputs:
            best = lambda x: jnp.max(jnp.where(cells > 0, x, -1e9), axis=1)  # noqa: E731
            hinge = jax.nn.relu(mil_margin - best(logits) + best(outputs["mismatched_cell_logits"]))
            other = jnp.roll(examples, -1)
            if "video_index" in batch:
                other = other * (batch["video_index"] != jnp.roll(batch["video_index"], -1))
            metrics["mil_loss"] = weighted_mean(hinge, examples * other)
            total = total + mil_weight * metrics["mil_loss"]
    metrics["loss"] = total
    return total, metrics


def predict_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None) -> tuple[Array, Array]:
    """The best cells of every scale: spans [B, N, 2] (fractions of the valid clips) and scores [B, N]
    (log p, ``MASKED_SCORE`` past the valid cells)."""
    del batch
    return outputs["candidate_spans"], outputs["candidate_scores"]


def evidence_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None) -> dict[str, dict[str, Array]]:
    """Each scale's 2D score map for pictures (``jvmr.visualize``): ``maps`` {name: [B, T, T]}, p = sigmoid
    of the cell's logit at (start clip, end clip) of the clip grid (a cell of stride r covers r x r clip
    pairs), NaN where the scale has no valid cell."""
    del batch
    t = outputs["video_mask"].shape[1]
    maps = {}
    for logits, mask in outputs["score_maps"]:
        stride = t // logits.shape[1]
        p = jnp.where(mask > 0, jax.nn.sigmoid(logits), jnp.nan)
        maps[f"2D score map, stride {stride}"] = jnp.repeat(jnp.repeat(p, stride, axis=1), stride, axis=2)
    return {"maps": maps}


def needs_labels(config: Any) -> bool:
    """Whether training batches carry ground-truth spans: only for the fully supervised variant."""
    return config.loss.get("supervision", "weak") == "full"


def model_inputs(model_config: Any) -> tuple[str, ...]:
    """The MIL ranking skips pairs of one video: it reads the batch's video index."""
    return ("video_index",) if model_config.get("mismatched_pairs", False) else ()
