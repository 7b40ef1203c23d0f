"""CI-MHA: Cross Interaction Network for moment retrieval (Yu et al., SIGIR 2021).

No official code exists; the paper's equations are the spec (seed
002_f3bc549e4027348c). Notation: T clips (the paper's N), L words, D = d_model.

Encoders (Sec. 2.2-2.3, 3.2):
    q_0 = Bi-LSTM(word embeddings)                          [L, D]  (paper: GloVe 300 -> 512)
    v_0 = W_v x + b_v                                       [T, D]  (C3D 500-d / I3D 1024-d features)
    q = MHA(Q = q_0, K = V = q_0) + q_0                     (eq. 3)
    v = MHA(Q = v_0, K = V = v_0) + v_0                     (eq. 4)
    v^ = FeedForward(v) + P[t]   (learned position table)   (eq. 5)
    q^ = FeedForward(q)                                     (eq. 6)
Cross interaction (Sec. 2.4):
    v^q = MHA(Q = q^, K = V = v^)   query -> video          (eq. 7; see below)
    q^v = MHA(Q = v^, K = V = q^)   video -> query          (eq. 8)
    s = [v^q, q^v]                                          (eq. 9)
Dependent start / end (Sec. 2.5, after ExCL):
    h^start = Bi-LSTM_start(s),  h^end = Bi-LSTM_end(h^start)            (eq. 10-11)
    c^start_t = MLP_start([h^start_t, s_t]),  c^end_t = MLP_end([h^end_t, s_t])   (eq. 12-13)
    P_start = softmax_t(c^start),  P_end = softmax_t(c^end)   over valid clips   (eq. 14)
    L_se = -log P_start(i*) - log P_end(j*)   (NLL of the ground-truth boundary clips)
Moment segmentation:
    P_in(t) = sigmoid(MLP_segment(s_t)),  L_ms = BCE(P_in(t), [i* <= t <= j*])     (eq. 15-16)
Inference: the (i <= j) pairs with the largest P_start(i) P_end(j), optionally
with j - i + 1 <= max_span_len; the top ``num_candidates`` go to the evaluation
protocol (NMS, then R@k).

Where the paper is ambiguous, we choose:

* **Eq. 7 is aligned with the video clips.** Read literally, MHA(Q = q^, K = V = v^)
  yields one row per *word*, yet eq. 9 concatenates v^q with the clip-aligned q^v
  along the feature axis, eq. 10 reads s_t at every clip, and the paper's "MHA" row
  predicts start/end from v^q alone; the paper also calls v^q the "query enriched
  video feature embedding (i.e. attention weighted video feature embedding)", as
  in [19] (VSLNet). Two readings bring it back to the clips (``eq7_reading``):

  - 'key_aligned' (default, :class:`KeyAlignedAttention`; VSLNet's query-guided
    highlighting scales each clip by its query relevance). We keep eq. 7's
    attention exactly (queries from the words, keys and values from the clips,
    per head) but do not sum the values over the clips: clip t keeps its own
    value, weighted by the attention the words pay it,

        v^q_t = W^O [ r_1(t) W^V_1 v^_t ; ... ; r_H(t) W^V_H v^_t ] + b^O,
        r_h(t) = (T_valid / L_valid) sum_l A_h[l, t],   A_h = softmax_t(q^ W^Q_h (v^ W^K_h)^T / sqrt(d_h)),

    so r_h(t) = 1 under uniform attention, and the mean of v^q over the valid
    clips equals the word-averaged output of the standard MHA with the same
    parameters (both less the output bias).
  - 'bidaf' (:class:`QueryToContextAttention`; BiDAF / VSLNet's query-to-context
    pattern B = S_r S_c^T C). Eq. 7 is the standard MHA, one row per word, and
    each clip takes a mix of those rows weighted by its own attention over the
    valid words:

        v^q = A(v -> q) MHA(Q = q^, K = V = v^),   A(v -> q) = softmax_l(W^c v^ (W^w q^)^T / sqrt(D))   [T, L]

    with single-head projections W^c, W^w (with biases) of its own.

  Eq. 8 is the standard :class:`~jvmr.models.layers.MultiHeadAttention` (one
  row per clip) in both.
* **FeedForward** (eq. 5-6) is the Transformer's position-wise block,
  W_2 ReLU(W_1 x + b_1) + b_2 with ``ffn_dim`` inner units (``ffn_dim = 0``: one
  linear layer, the literal "a feed-forward layer"). No LayerNorm anywhere (the
  paper names none).
* **Eq. 11**: Bi-LSTM_end reads h^start_t at step t (ExCL; the paper's index t-1
  is the recurrence's notation). Initial LSTM states are zero.
* **MLPs** (eq. 12-13, 15) are Dense(mlp_dim) -> tanh -> Dense(1), as ExCL.
* **Labels**: with n valid clips (pad mode: the valid prefix covers the whole
  video; resample mode: n = T), clip t covers [t/n, (t+1)/n] of the duration;
  the GT start / end clips are the clips containing the GT start / end
  (i* = floor(s n), j* = ceil(e n) - 1, with a 1e-4-clip tolerance so that
  boundaries on clip edges map exactly), the segmentation labels are 1 on
  clips i*..j*, and the pair (i, j) decodes to [i/n, (j+1)/n]. This is CMIN's
  convention (:func:`jvmr.models.cmin.make_anchors`).
* **Loss averaging**: the NLLs are averaged over examples, the BCE over all valid
  clips of the batch; examples with no valid clip (eval batch fillers) count
  for nothing.
* **Dropout** (not in the paper; rate ``dropout``) on the word embeddings, the
  clip features, the FeedForward inner units and s; ``attention_dropout`` on
  every attention map.

Switches: ``fusion_mode`` ('cross' = CI-MHA, eq. 7-9; 'one_way' = the paper's
"MHA" row, s = v^q), ``eq7_reading`` ('key_aligned' or 'bidaf', above),
``use_segmentation`` (False = "CI-MHA w/o MS": no segmentation head or loss),
loss weights in :func:`loss_fn`, ``max_span_len`` and ``num_candidates`` for
decoding.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jvmr.models.layers import (BiLSTM, Dropout, FeedForward, LearnedPositionalEmbedding, MultiHeadAttention,
                                WordEmbedding, constrain, dense, mask_fill, weighted_mean, masked_log_softmax,
                                masked_softmax, sequence_lengths)
from jvmr.models.spans import (MASKED_SCORE, boundary_evidence, boundary_indices, decode_spans,  # noqa: F401
                                segment_labels)

Array = jax.Array

FUSION_MODES = ("cross", "one_way")
EQ7_READINGS = ("key_aligned", "bidaf")

default_embed_init = WordEmbedding.embedding_init  # nn.Embed's


# ----------------------------------------------------------------------------- layers


class KeyAlignedAttention(nn.Module):
    """Multi-head attention of queries over keys whose output stays aligned with the keys (eq. 7).

        A_h = softmax_keys(W^Q_h x_q (W^K_h x_k)^T / sqrt(d_h))          [Tq, Tk], valid keys only
        r_h(j) = (Tk_valid / Tq_valid) sum_i A_h[i, j]                    attention paid to key j
        out_j = W^O [r_1(j) W^V_1 x_k_j ; ... ; r_H(j) W^V_H x_k_j] + b^O   [Tk, out_features]

    Parameters are named as :class:`~jvmr.models.layers.MultiHeadAttention`'s
    (query, key, value, out): the mean of ``out_j - b^O`` over the valid keys is
    the mean over the valid queries of ``MultiHeadAttention(x_q, x_k) - b^O``
    with the same parameters.

    Attributes:
      num_heads: H.
      out_features: output size; defaults to the key feature size (also the
        width H * d_h of the projections).
      dropout_rate: dropout on the attention weights (only when not deterministic).
    """

    num_heads: int
    out_features: int | None = None
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array,
        *,
        query_mask: Array,
        key_mask: Array,
        deterministic: bool = True,
        return_weights: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Args: inputs_q [B, Tq, Dq]; inputs_k [B, Tk, Dk]; query_mask [B, Tq]; key_mask [B, Tk].

        Returns:
          [B, Tk, out_features] (zero at padded keys), and optionally the
          attention weights A [B, H, Tq, Tk] (zero at padded queries and keys).
        """
        inputs_q = mask_fill(inputs_q, query_mask)
        inputs_k = mask_fill(inputs_k, key_mask)
        out_features = self.out_features or inputs_k.shape[-1]
        h = self.num_heads
        head_dim = out_features // h
        if head_dim <= 0 or out_features % h:
            raise ValueError(f"out_features {out_features} must be a positive multiple of num_heads {h}")
        batch, tq, tk = inputs_q.shape[0], inputs_q.shape[1], inputs_k.shape[1]
        def project(x, name, length):
            y = dense(h * head_dim, ("embed", "heads"), name=name)(x).reshape(batch, length, h, head_dim)
            return constrain(y, ("batch", "length", "heads", None))

        q, k, v = project(inputs_q, "query", tq), project(inputs_k, "key", tk), project(inputs_k, "value", tk)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(head_dim, q.dtype))
        weights = masked_softmax(logits, (key_mask > 0)[:, None, None, :], axis=-1)
        weights = weights * (query_mask > 0)[:, None, :, None].astype(weights.dtype)
        if self.dropout_rate > 0.0 and not deterministic:
            weights = Dropout(self.dropout_rate)(weights, deterministic=False)
        n_q = sequence_lengths(query_mask).astype(weights.dtype)
        n_k = sequence_lengths(key_mask).astype(weights.dtype)
        scale = n_k / jnp.maximum(n_q, 1.0)  # uniform attention -> r = 1
        relevance = jnp.sum(weights, axis=2) * scale[:, None, None]  # [B, H, Tk]
        ctx = (jnp.transpose(relevance, (0, 2, 1))[..., None] * v).reshape(batch, tk, h * head_dim)
        out = mask_fill(dense(out_features, ("heads", "embed"), name="out")(ctx), key_mask)
        return (out, weights) if return_weights else out


class QueryToContextAttention(nn.Module):
    """Eq. 7, 'bidaf' reading: each clip mixes the word rows of the standard MHA (BiDAF / VSLNet pattern).

        R = MultiHeadAttention(Q = x_q, K = V = x_k)                    [Tq, D]   one row per word
        A = softmax_q(W^c x_k (W^w x_q)^T / sqrt(D))                     [Tk, Tq]  valid queries only
        out = A R                                                       [Tk, D]

    Parameters: ``attention`` (the :class:`~jvmr.models.layers.MultiHeadAttention`),
    ``key_proj`` (W^c) and ``query_proj`` (W^w), single-head Dense(D) layers.

    Attributes:
      num_heads: heads of R's attention.
      dropout_rate: dropout on both attention maps (only when not deterministic).
    """

    num_heads: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array,
        *,
        query_mask: Array,
        key_mask: Array,
        deterministic: bool = True,
        return_weights: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Args: inputs_q [B, Tq, Dq] (words); inputs_k [B, Tk, Dk] (clips); query_mask [B, Tq]; key_mask [B, Tk].

        Returns:
          [B, Tk, Dq] (zero at padded keys), and optionally A [B, Tk, Tq] (zero
          at padded queries and keys).
        """
        rows = MultiHeadAttention(num_heads=self.num_heads, dropout_rate=self.dropout_rate, name="attention")(
            inputs_q, inputs_k, key_mask=key_mask, query_mask=query_mask, deterministic=deterministic)  # [B, Tq, D]
        d = rows.shape[-1]
        keys = dense(d, ("embed", "heads"), name="key_proj")(mask_fill(inputs_k, key_mask))
        queries = dense(d, ("embed", "heads"), name="query_proj")(mask_fill(inputs_q, query_mask))
        logits = jnp.einsum("bkd,bqd->bkq", keys, queries) / jnp.sqrt(jnp.asarray(d, keys.dtype))
        weights = masked_softmax(logits, (query_mask > 0)[:, None, :], axis=-1)
        weights = weights * (key_mask > 0)[:, :, None].astype(weights.dtype)
        if self.dropout_rate > 0.0 and not deterministic:
            weights = Dropout(self.dropout_rate)(weights, deterministic=False)
        out = mask_fill(jnp.einsum("bkq,bqd->bkd", weights, rows), key_mask)
        return (out, weights) if return_weights else out


# ----------------------------------------------------------------------------- labels / decoding


# ----------------------------------------------------------------------------- model


class CIMHA(nn.Module):
    """Cross interaction multi-head attention network (eq. 1-16; see the module docstring).

    Attributes:
      vocab_size: word vocabulary size (0 = padding, 1 = OOV).
      word_dim: word-embedding size (paper: 300-d GloVe).
      d_model: D, the size of q_0, v_0 and every attention (paper: 512); the
        query Bi-LSTM has d_model // 2 units per direction.
      num_heads: heads of every attention.
      ffn_dim: inner size of the FeedForward blocks of eq. 5-6 (0 = one linear layer).
      lstm_hidden: units per direction of Bi-LSTM_start / Bi-LSTM_end (0 = d_model // 2).
      mlp_dim: hidden size of the start / end / segmentation MLPs (0 = d_model).
      dropout: dropout on word embeddings, clip features, FeedForward inner units and s.
      attention_dropout: dropout on the attention weights.
      fusion_mode: 'cross' (CI-MHA: s = [v^q, q^v]) or 'one_way' (the paper's
        "MHA" row: s = v^q, no eq. 8 parameters).
      eq7_reading: 'key_aligned' (:class:`KeyAlignedAttention`) or 'bidaf'
        (:class:`QueryToContextAttention`); see the module docstring.
      use_segmentation: the moment segmentation head (False = "CI-MHA w/o MS").
      max_span_len: decoding limit on j - i + 1 in clips (0 = none).
      num_candidates: top (i <= j) pairs returned for evaluation.
      max_positions: rows of the learned position table (0 = the clip grid T at init).
      embedding_init: initializer of the word table (hook for GloVe).
      freeze_embeddings: stop gradients into the word table.
    """

    vocab_size: int
    word_dim: int = 300
    d_model: int = 512
    num_heads: int = 8
    ffn_dim: int = 1024
    lstm_hidden: int = 0
    mlp_dim: int = 0
    dropout: float = 0.1
    attention_dropout: float = 0.0
    fusion_mode: str = "cross"
    eq7_reading: str = "key_aligned"
    use_segmentation: bool = True
    max_span_len: int = 0
    num_candidates: int = 100
    max_positions: int = 0
    embedding_init: Callable[..., Any] = default_embed_init
    freeze_embeddings: bool = False

    def _check(self) -> None:
        if self.fusion_mode not in FUSION_MODES:
            raise ValueError(f"fusion_mode must be one of {FUSION_MODES}, got {self.fusion_mode!r}")
        if self.eq7_reading not in EQ7_READINGS:
            raise ValueError(f"eq7_reading must be one of {EQ7_READINGS}, got {self.eq7_reading!r}")
        if self.d_model % 2 or self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} must be even and divisible by num_heads {self.num_heads}")
        if self.num_candidates < 1 or self.max_span_len < 0:
            raise ValueError(f"need num_candidates >= 1 and max_span_len >= 0, got {self.num_candidates}, "
                             f"{self.max_span_len}")

    def _attention(self, name: str) -> MultiHeadAttention:
        return MultiHeadAttention(num_heads=self.num_heads, dropout_rate=self.attention_dropout, name=name)

    def _mlp(self, name: str) -> FeedForward:
        return FeedForward(1, self.mlp_dim or self.d_model, activation=jnp.tanh, name=name)

    def encode_query(self, batch: Mapping[str, Array], deterministic: bool) -> tuple[Array, Array]:
        """q^ of eq. 6 ([B, L, D], zero at padded words) and the word mask [B, L]."""
        mask = (batch["query_mask"] > 0).astype(jnp.float32)
        words = WordEmbedding(self.vocab_size, self.word_dim, embedding_init=self.embedding_init,
                              freeze=self.freeze_embeddings, dropout_rate=self.dropout, name="word_embed")(
            batch["query_tokens"], mask, deterministic=deterministic)
        q0 = BiLSTM(self.d_model // 2, name="query_rnn")(words, mask)
        q = q0 + self._attention("query_self_attention")(
            q0, key_mask=mask, query_mask=mask, deterministic=deterministic)  # eq. 3
        q_hat = FeedForward(self.d_model, self.ffn_dim, dropout_rate=self.dropout, name="query_ffn")(
            q, deterministic=deterministic)  # eq. 6
        return mask_fill(q_hat, mask), mask

    def encode_video(self, batch: Mapping[str, Array], deterministic: bool) -> tuple[Array, Array]:
        """v^ of eq. 5 ([B, T, D], zero at padded clips) and the clip mask [B, T]."""
        mask = (batch["video_mask"] > 0).astype(jnp.float32)
        feats = mask_fill(batch["video_feats"].astype(jnp.float32), mask)
        feats = Dropout(self.dropout)(feats, deterministic=deterministic)
        v0 = mask_fill(nn.Dense(self.d_model, name="video_proj")(feats), mask)
        v = v0 + self._attention("video_self_attention")(
            v0, key_mask=mask, query_mask=mask, deterministic=deterministic)  # eq. 4
        v_hat = FeedForward(self.d_model, self.ffn_dim, dropout_rate=self.dropout, name="video_ffn")(
            v, deterministic=deterministic)
        v_hat = LearnedPositionalEmbedding(self.max_positions, name="video_position")(v_hat)  # eq. 5
        return mask_fill(v_hat, mask), mask

    @nn.compact
    def __call__(self, batch: Mapping[str, Array], *, train: bool) -> dict[str, Array]:
        """Forward pass.

        Args:
          batch: dict with video_feats [B, T, Dv], video_mask [B, T],
            query_tokens [B, L], query_mask [B, L].
          train: enables dropout (needs a 'dropout' rng).

        Returns:
          start_logits, end_logits [B, T] (c^start, c^end; 0 at padded clips),
          segment_logits [B, T] (only with ``use_segmentation``; 0 at padded
          clips), video_mask [B, T], fused [B, T, D or 2D] (s of eq. 9),
          candidate_spans [B, N, 2] and candidate_scores [B, N] (:func:`decode_spans`).
        """
        self._check()
        det = not train
        q_hat, qmask = self.encode_query(batch, det)
        v_hat, vmask = self.encode_video(batch, det)

        eq7 = KeyAlignedAttention if self.eq7_reading == "key_aligned" else QueryToContextAttention
        v_q = eq7(self.num_heads, dropout_rate=self.attention_dropout, name="query_to_video")(
            q_hat, v_hat, query_mask=qmask, key_mask=vmask, deterministic=det)  # eq. 7
        if self.fusion_mode == "cross":
            q_v = self._attention("video_to_query")(
                v_hat, q_hat, key_mask=qmask, query_mask=vmask, deterministic=det)  # eq. 8
            fused = jnp.concatenate([v_q, q_v], axis=-1)  # eq. 9
        else:
            fused = v_q
        fused = Dropout(self.dropout)(fused, deterministic=det)

        hidden = self.lstm_hidden or self.d_model // 2
        h_start = BiLSTM(hidden, name="start_rnn")(fused, vmask)  # eq. 10
        h_end = BiLSTM(hidden, name="end_rnn")(h_start, vmask)  # eq. 11
        start_logits = self._mlp("start_head")(jnp.concatenate([h_start, fused], -1))[..., 0]  # eq. 12
        end_logits = self._mlp("end_head")(jnp.concatenate([h_end, fused], -1))[..., 0]  # eq. 13
        start_logits, end_logits = mask_fill(start_logits, vmask), mask_fill(end_logits, vmask)
        spans, scores = decode_spans(start_logits, end_logits, vmask, max_span_len=self.max_span_len,
                                     num_candidates=self.num_candidates)
        outputs = {
            "start_logits": start_logits,
            "end_logits": end_logits,
            "video_mask": vmask,
            "fused": mask_fill(fused, vmask),
            "candidate_spans": spans,
            "candidate_scores": scores,
        }
        if self.use_segmentation:
            outputs["segment_logits"] = mask_fill(self._mlp("segment_head")(fused)[..., 0], vmask)  # eq. 15
        return outputs


# ----------------------------------------------------------------------------- loss / predict


def loss_fn(
    outputs: Mapping[str, Array],
    batch: Mapping[str, Array],
    *,
    step: Array | None = None,
    rng: Array | None = None,
    axis_name: str | None = None,
    start_weight: float = 1.0,
    end_weight: float = 1.0,
    segment_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """start_weight * NLL_start + end_weight * NLL_end + segment_weight * BCE_segment.

    NLL: -log P_start(i*) (resp. P_end(j*)) with P the softmax over valid clips
    (eq. 14), averaged over examples with at least one valid clip. The labels
    come from the first ground-truth span (gt_span) only, also when an example
    has several (gt_spans): start / end classification has a single target. BCE: per-clip
    binary cross-entropy of sigmoid(segment_logits) against the labels of
    :func:`segment_labels` (eq. 15-16), averaged over all valid clips; absent
    (0) when the model has no segmentation head.

    Args:
      outputs: :class:`CIMHA` outputs.
      batch: needs gt_span [B, 2] (fractions of the duration).
      start_weight, end_weight, segment_weight: loss weights.

    Returns:
      (loss, {'loss', 'start_loss', 'end_loss', 'segment_loss'}).
    """
    del step, rng  # Deterministic, per-example loss; axis_name: means over the global batch under pmap.
    vmask = outputs["video_mask"]
    start, end = boundary_indices(batch["gt_span"], vmask)
    has_clips = (sequence_lengths(vmask) > 0).astype(jnp.float32)

    def nll(logits: Array, index: Array) -> Array:
        log_p = jnp.take_along_axis(masked_log_softmax(logits, vmask), index[:, None], axis=1)[:, 0]
        return weighted_mean(jnp.where(has_clips > 0, -log_p, 0.0), has_clips, axis_name)

    start_loss = nll(outputs["start_logits"], start)
    end_loss = nll(outputs["end_logits"], end)
    loss = start_weight * start_loss + end_weight * end_loss
    segment_loss = jnp.zeros((), start_loss.dtype)
    if "segment_logits" in outputs:
        logits = outputs["segment_logits"]
        labels = segment_labels(start, end, logits.shape[1])
        bce = -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
        segment_loss = weighted_mean(bce, vmask, axis_name)
        loss = loss + segment_weight * segment_loss
    return loss, {"loss": loss, "start_loss": start_loss, "end_loss": end_loss, "segment_loss": segment_loss}


def predict_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None) -> tuple[Array, Array]:
    """The decoded candidates: spans [B, N, 2] (fractions, start <= end) and scores [B, N]
    (joint log-probabilities, ``MASKED_SCORE`` for impossible pairs); ``batch`` is unused."""
    del batch
    return outputs["candidate_spans"], outputs["candidate_scores"]


def evidence_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None) -> dict[str, dict[str, Array]]:
    """Per-clip ``curves`` [B, T] for pictures (``jvmr.visualize``): P_start, P_end and, with the
    segmentation head, sigmoid(c^seg), the probability that a clip lies inside the moment."""
    del batch
    mask = outputs["video_mask"]
    curves = boundary_evidence(outputs["start_logits"], outputs["end_logits"], mask)
    if "segment_logits" in outputs:
        curves["segment probability"] = jax.nn.sigmoid(outputs["segment_logits"]) * (mask > 0)
    return {"curves": curves}
