"""CMIN: Cross-Modal Interaction Networks (Zhang, Lin, Zhao & Xiao, SIGIR 2019).

The paper's model is the default; the released code's deviations
(github.com/ikuinen/CMIN_moment_retrieval) are switches. Equations (seed):

Query (Sec. a, syntactic GCN; see :mod:`jvmr.models.graph`):
    h^q = BiGRU(word embeddings)
    g^1 = synGCN(h^q), o^1 = g^1 + h^q;  g^l = synGCN(o^{l-1}), o^l = g^l + o^{l-1}
Video (Sec. b, multi-head self-attention):
    V^S = MultiHead(V, V, V) + V        (num_attn_layers times; no FFN / LayerNorm)
    h^v = BiGRU(V^S)
Cross-modal interaction (Sec. c):
    M_ij = softmax_j( w^T tanh(W_1 h^v_i + W_2 o_j + b) ),   h^s_i = sum_j M_ij o_j
    h~s_i = h^s_i * sigmoid(W^v h^v_i + b^v),   h~v_i = h^v_i * sigmoid(W^s h^s_i + b^s)
    f_i = ReLU(h~s_i^T W_f h~v_i + b_f)                     (bilinear fusion)
    h^f = BiGRU(f)
Localisation (Sec. d): at every step i and anchor width w_k, a confidence
cs_ik = sigmoid(Conv1d_k=1(h^f)) and boundary offsets (delta_s, delta_e);
    L_align = -1/(nk) sum_ik (1 - IoU_ik) log(1 - cs_ik) + IoU_ik log(cs_ik)
    L_reg   = 1/N sum (L1(delta_s - delta^_s) + L1(delta_e - delta^_e)).
With several ground-truth spans, IoU_ik is the anchor's best IoU over them and
its regression target the span attaining it.

Variant switches (see :class:`CMIN`): ``fusion`` ('bilinear' paper, 'lowrank'
the released but unused Bilinear module, 'concat' the released code = paper's
"w/o BF"), ``attention_window`` (released: 3), ``gcn_placement`` ('before_rnn'
= released: GCN on word embeddings, then BiGRU), ``gcn_gate_input``
('transformed' = released: vector gates from W_dir h_j), ``use_gates`` (False =
the seed's ungated equation), ``label_mode`` and ``reg_mode`` of :func:`loss_fn`
('scaled' / 'released'), the paper's ablations ``use_gcn`` /
``use_self_attention`` / ``use_cross_gate``, and ``query_blind`` (benchmark
control: the query is never read).

Spans are fractions of the video's *valid* length: the anchor centred on clip
t with width w (clips) is [(t + 0.5 - w/2) / n, (t + 0.5 + w/2) / n], n = number
of valid clips (the released code's inclusive frame anchor [t - (w-1)/2,
t + (w-1)/2]); anchors crossing the valid range are masked, as released.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jvmr.data.text import DEPENDENCY_LABELS
from jvmr.models.graph import SyntacticGCNStack
from jvmr.models.layers import (AdditiveAttention, BiGRU, Dropout, MultiHeadAttention, dense, mask_fill, partitioned,
                                weighted_mean)
from jvmr.models.spans import temporal_iou  # noqa: F401  (cmin.temporal_iou: anchor IoUs)

Array = jax.Array

FUSIONS = ("bilinear", "lowrank", "concat")
GCN_PLACEMENTS = ("after_rnn", "before_rnn")
LABEL_MODES = ("iou", "scaled")
REG_MODES = ("paper", "released")
RELEASED_REG_SCALE = 1e-3  # released code: loss = cls_loss + 1e-3 * SmoothL1(refined box, gt box)
MASKED_SCORE = -jnp.inf  # score of masked anchors in predict_fn: never ranked, never kept.

default_embed_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


# ----------------------------------------------------------------------------- layers


class CrossGate(nn.Module):
    """Cross gate: each modality gates the other.

        h~s_i = h^s_i * sigmoid(W^v h^v_i + b^v),   h~v_i = h^v_i * sigmoid(W^s h^s_i + b^s)
    """

    @nn.compact
    def __call__(self, video: Array, query: Array) -> tuple[Array, Array]:
        """Args: video h^v [B, T, Dv]; query h^s [B, T, Ds]. Returns (h~s [B, T, Ds], h~v [B, T, Dv])."""
        gated_query = query * jax.nn.sigmoid(dense(query.shape[-1], ("embed", "mlp"), name="video_to_query")(video))
        gated_video = video * jax.nn.sigmoid(dense(video.shape[-1], ("embed", "mlp"), name="query_to_video")(query))
        return gated_query, gated_video


class BilinearFusion(nn.Module):
    """Full bilinear fusion f = ReLU(x^T W_f y + b_f) with W_f of shape [F, Dx, Dy].

    The contraction materialises an [N, F, Dy] intermediate (N = B*T rows), 4 * N * F * Dy bytes, which the
    backward pass keeps: 3.4 GB at CMIN's ActivityNet preset (d = 512, F = 64) and batch 128. With
    ``chunk_rows`` the rows go through a scan in equal chunks of at most that many, each rematerialised
    in the backward pass (``jax.checkpoint``), so only one chunk's intermediate is alive at a time; this
    costs one more [chunk, Dx] x [Dx, F*Dy] product per chunk (a third more fusion FLOPs) and gives the
    same values.

    Attributes:
      features: output size F.
      chunk_rows: rows per chunk (0: one contraction over all rows).
    """

    features: int
    chunk_rows: int = 0

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """Args: x [..., Dx] (h~s); y [..., Dy] (h~v). Returns [..., features]."""
        kernel = self.param(
            "kernel",
            partitioned(nn.initializers.lecun_normal(in_axis=(1, 2), out_axis=0), ("fusion", None, None)),
            (self.features, x.shape[-1], y.shape[-1]),
        )
        bias = self.param("bias", partitioned(nn.initializers.zeros_init(), ("fusion",)), (self.features,))

        def contract(kernel: Array, x: Array, y: Array) -> Array:
            return jnp.einsum("...i,kij,...j->...k", x, kernel, y, optimize="optimal")

        lead = x.shape[:-1]
        if self.chunk_rows > 0 and lead and jax.export.is_symbolic_dim(lead[0]):
            # A symbolic batch (jax.export): the rows of every example in chunks, all examples at once.
            return jax.nn.relu(self._chunk_each_example(contract, kernel, x, y) + bias)
        rows = math.prod(lead)
        if self.chunk_rows <= 0 or rows <= self.chunk_rows:
            return jax.nn.relu(contract(kernel, x, y) + bias)
        chunks = -(-rows // self.chunk_rows)
        size = -(-rows // chunks)  # equal chunks of at most chunk_rows rows
        pad = chunks * size - rows  # zero rows, cut off below

        def split(z: Array) -> Array:
            z = jnp.pad(z.reshape(rows, z.shape[-1]), ((0, pad), (0, 0)))
            return z.reshape(chunks, size, z.shape[-1])

        remat = jax.checkpoint(contract)
        _, out = jax.lax.scan(lambda _, xy: (None, remat(kernel, *xy)), None, (split(x), split(y)))
        out = out.reshape(chunks * size, self.features)[:rows].reshape(lead + (self.features,))
        return jax.nn.relu(out + bias)

    def _chunk_each_example(self, contract, kernel: Array, x: Array, y: Array) -> Array:
        """contract(kernel, x, y) with x [B, ..., Dx] of a symbolic B: the static rows of each example in
        equal chunks of at most ``chunk_rows``, every chunk over the whole batch. Returns [B, ..., features]."""
        lead = x.shape[:-1]
        rows = math.prod(lead[1:])
        chunks = -(-rows // self.chunk_rows)
        size = -(-rows // chunks)
        pad = chunks * size - rows

        def split(z: Array) -> Array:  # [B, ..., D] -> [chunks, B, size, D]
            z = jnp.pad(z.reshape(lead[0], rows, z.shape[-1]), ((0, 0), (0, pad), (0, 0)))
            return jnp.moveaxis(z.reshape(lead[0], chunks, size, z.shape[-1]), 1, 0)

        _, out = jax.lax.scan(lambda _, xy: (None, contract(kernel, *xy)), None, (split(x), split(y)))
        out = jnp.moveaxis(out, 0, 1).reshape(lead[0], chunks * size, self.features)[:, :rows]
        return out.reshape(lead + (self.features,))


class LowRankBilinearFusion(nn.Module):
    """Low-rank bilinear fusion of the released code: f = P(ReLU(U x * V y)).

    Attributes:
      features: output size (P).
      rank: size of the U x, V y projections.
    """

    features: int
    rank: int

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """Args: x [..., Dx]; y [..., Dy]. Returns [..., features]."""
        joint = dense(self.rank, ("embed", "fusion"), name="U")(x) * dense(
            self.rank, ("embed", "fusion"), name="V")(y)
        return dense(self.features, ("fusion", None), name="P")(jax.nn.relu(joint))


class Fusion(nn.Module):
    """Fuses the gated query (h~s) and video (h~v) streams.

    Attributes:
      mode: 'bilinear' (paper, :class:`BilinearFusion`), 'lowrank' (released
        Bilinear module, :class:`LowRankBilinearFusion`) or 'concat' (released
        code / "w/o BF": [h~v; h~s], no parameters).
      features: output size of the (low-rank) bilinear fusions.
      rank: rank of the low-rank fusion.
      chunk_rows: rows per rematerialised chunk of the full bilinear fusion (0: all at once); see
        :class:`BilinearFusion`.
    """

    mode: str
    features: int
    rank: int
    chunk_rows: int = 0

    @nn.compact
    def __call__(self, hs: Array, hv: Array) -> Array:
        """Args: hs [B, T, Ds]; hv [B, T, Dv]. Returns [B, T, features] ([B, T, Dv + Ds] for concat)."""
        if self.mode == "bilinear":
            return BilinearFusion(self.features, self.chunk_rows, name="bilinear")(hs, hv)
        if self.mode == "lowrank":
            return LowRankBilinearFusion(self.features, self.rank, name="lowrank")(hs, hv)
        if self.mode == "concat":
            return jnp.concatenate([hv, hs], axis=-1)  # released: cat([frames1, x1'])
        raise ValueError(f"fusion must be one of {FUSIONS}, got {self.mode!r}")


# ----------------------------------------------------------------------------- anchors


def make_anchors(video_mask: Array, anchor_widths: tuple[int, ...]) -> tuple[Array, Array]:
    """Fixed-width anchors centred on every clip, as fractions of the valid length.

    Args:
      video_mask: [B, T] prefix mask.
      anchor_widths: K widths in clips.

    Returns:
      spans [B, T, K, 2] ([start, end] / n) and mask [B, T, K] (1 where clip t is
      valid and the anchor lies inside the n valid clips).
    """
    t = jnp.arange(video_mask.shape[1], dtype=jnp.int32)[None, :, None]  # [1, T, 1]
    w = jnp.asarray(anchor_widths, jnp.int32)[None, None, :]  # [1, 1, K]
    n_int = jnp.sum(video_mask > 0, axis=1).astype(jnp.int32)[:, None, None]  # [B, 1, 1]
    n = jnp.maximum(n_int, 1).astype(jnp.float32)
    centre = t.astype(jnp.float32) + 0.5
    half = w.astype(jnp.float32) / 2.0
    spans = jnp.stack(jnp.broadcast_arrays((centre - half) / n, (centre + half) / n), axis=-1)
    # Integer test (doubled units) avoids float round-off at the borders.
    inside = (2 * t + 1 - w >= 0) & (2 * t + 1 + w <= 2 * n_int) & (t < n_int)
    return spans, inside.astype(jnp.float32)


def gt_fractions(batch: Mapping[str, Array]) -> tuple[Array, Array]:
    """Every ground-truth span of the batch as fractions: ([B, G, 2], mask [B, G]).

    From gt_spans [B, G, 2] (seconds) / duration [B] with gt_spans_mask [B, G]
    when the batch has them (the pipeline's; span 0 / duration is exactly
    gt_span; padded spans become [0, 0]), else gt_span [B, 2] as the only span.
    """
    if "gt_spans" in batch:
        duration = batch["duration"].astype(jnp.float32)
        duration = jnp.where(duration > 0, duration, 1.0)[:, None, None]
        mask = batch["gt_spans_mask"].astype(jnp.float32)
        return mask_fill(batch["gt_spans"].astype(jnp.float32) / duration, mask), mask
    gt = batch["gt_span"].astype(jnp.float32)[:, None, :]
    return gt, jnp.ones(gt.shape[:2], jnp.float32)


def anchor_ious(anchor_spans: Array, anchor_mask: Array, gt_spans: Array,
                gt_mask: Array | None = None) -> tuple[Array, Array]:
    """Best IoU of every anchor over the valid ground-truth spans, and which span attains it.

    Args:
      anchor_spans: [B, T, K, 2] fractions.
      anchor_mask: [B, T, K].
      gt_spans: [B, G, 2] fractions (or [B, 2]: one span).
      gt_mask: [B, G] (1 = real span); None = all real.

    Returns:
      (IoU [B, T, K], 0 at masked anchors; index [B, T, K] int32 of the valid
      span with the highest IoU, the first on ties).
    """
    if gt_spans.ndim == 2:
        gt_spans = gt_spans[:, None, :]
    if gt_mask is None:
        gt_mask = jnp.ones(gt_spans.shape[:2], jnp.float32)
    iou = temporal_iou(anchor_spans[..., None, :], gt_spans[:, None, None, :, :])  # [B, T, K, G]
    iou = jnp.where(gt_mask[:, None, None, :] > 0, iou, -1.0)
    best = jnp.argmax(iou, axis=-1).astype(jnp.int32)
    return jnp.maximum(jnp.max(iou, axis=-1), 0.0) * (anchor_mask > 0), best


def anchor_labels(anchor_spans: Array, anchor_mask: Array, gt_spans: Array, label_mode: str = "iou",
                  gt_mask: Array | None = None) -> Array:
    """Soft alignment targets of the anchors.

    Args:
      anchor_spans: [B, T, K, 2] fractions.
      anchor_mask: [B, T, K].
      gt_spans: [B, 2] or [B, G, 2] fractions.
      label_mode: 'iou' (paper: the IoU itself) or 'scaled' (released code:
        IoU < 0.3 * max IoU -> 0, then divided by the max IoU over valid anchors,
        so the best anchor's target is 1).
      gt_mask: [B, G] (1 = real span); None = all real.

    Returns:
      [B, T, K] targets in [0, 1] from the best IoU over the valid spans
      (:func:`anchor_ious`), 0 at masked anchors.
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    iou, _ = anchor_ious(anchor_spans, anchor_mask, gt_spans, gt_mask)
    if label_mode == "iou":
        return iou
    best = jnp.max(iou, axis=(1, 2), keepdims=True)
    kept = jnp.where(iou >= 0.3 * best, iou, 0.0)
    return kept / jnp.where(best > 0, best, 1.0)


# ----------------------------------------------------------------------------- model


class CMIN(nn.Module):
    """Cross-Modal Interaction Network.

    Attributes:
      vocab_size: word vocabulary size (0 = padding, 1 = OOV).
      num_dep_labels: dependency-label table size.
      word_dim: word-embedding size.
      d_model: hidden size d; every BiGRU uses d_model // 2 per direction.
      num_heads: self-attention heads.
      num_attn_layers: stacked video self-attention layers.
      num_gcn_layers: stacked syntactic GCN layers.
      dropout: dropout rate (word embeddings, video features, GCN outputs, fused features).
      attention_dropout: dropout on self-attention weights.
      anchor_widths: K anchor widths in clips of the model's grid.
      use_gcn: False = ablation "w/o GCN" (no GCN parameters).
      use_self_attention: False = ablation "w/o SA".
      use_cross_gate: False = ablation "w/o CG" (identity).
      fusion: 'bilinear' (paper), 'lowrank' (released Bilinear module) or
        'concat' (released code / "w/o BF").
      fusion_dim: output size of the (low-rank) bilinear fusion; None = d_model.
      fusion_chunk_rows: the full bilinear fusion runs over chunks of this many clips, each
        rematerialised in the backward pass (0: all at once); bounds its memory, same values.
      attention_window: local self-attention band |i - j| <= window (released: 3); 0 = global.
      gcn_placement: 'after_rnn' (paper: BiGRU then GCN) or 'before_rnn' (released: GCN on embeddings).
      gcn_gate_input: 'input' (M&T scalar gate from h_j) or 'transformed'
        (released: vector gate from W_dir h_j); see :mod:`jvmr.models.graph`.
      use_gates: gated GCN edges (M&T, released code); False = the seed's
        ungated equation.
      query_blind: control: the query is never read; its representation is a
        learned constant vector at every word position.
      fused_rnn: run a BiGRU over the fused sequence (paper and released code).
      embedding_init: initializer of the word table (hook for GloVe, e.g.
        ``lambda key, shape, dtype: jnp.asarray(glove, dtype)``).
      freeze_embeddings: stop gradients into the word table (released code uses fixed GloVe).
    """

    vocab_size: int
    num_dep_labels: int = len(DEPENDENCY_LABELS)
    word_dim: int = 300
    d_model: int = 256
    num_heads: int = 4
    num_attn_layers: int = 2
    num_gcn_layers: int = 2
    dropout: float = 0.2
    attention_dropout: float = 0.0
    anchor_widths: tuple[int, ...] = (4, 8, 16, 24, 32)
    use_gcn: bool = True
    use_self_attention: bool = True
    use_cross_gate: bool = True
    fusion: str = "bilinear"
    fusion_dim: int | None = None
    fusion_chunk_rows: int = 0
    attention_window: int = 0
    gcn_placement: str = "after_rnn"
    gcn_gate_input: str = "input"
    use_gates: bool = True
    query_blind: bool = False
    fused_rnn: bool = True
    embedding_init: Callable[..., Any] = default_embed_init
    freeze_embeddings: bool = False

    def _check(self) -> None:
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (BiGRU halves), got {self.d_model}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.gcn_placement not in GCN_PLACEMENTS:
            raise ValueError(f"gcn_placement must be one of {GCN_PLACEMENTS}, got {self.gcn_placement!r}")
        if not self.anchor_widths or any(int(w) < 1 for w in self.anchor_widths):
            raise ValueError(f"anchor_widths must be positive, got {self.anchor_widths!r}")

    def _gcn(self, x: Array, batch: Mapping[str, Array], query_mask: Array, deterministic: bool) -> Array:
        return SyntacticGCNStack(
            num_layers=self.num_gcn_layers,
            num_labels=self.num_dep_labels,
            use_gates=self.use_gates,
            gate_input=self.gcn_gate_input,
            dropout_rate=self.dropout,
            name="syntactic_gcn",
        )(
            x,
            query_mask,
            batch["edge_senders"],
            batch["edge_receivers"],
            batch["edge_labels"],
            batch["edge_directions"],
            batch["edge_mask"],
            deterministic=deterministic,
        )

    def encode_query(self, batch: Mapping[str, Array], deterministic: bool) -> tuple[Array, Array]:
        """Query encoder: embeddings -> BiGRU -> syntactic GCN (or GCN -> BiGRU).

        Returns:
          (o [B, L, d_model] zero at padded words, its mask [B, L]).
        """
        tokens = batch["query_tokens"]
        b, l = tokens.shape
        if self.query_blind:
            const = self.param("blind_query", nn.initializers.normal(1.0), (self.d_model,))
            return jnp.broadcast_to(const, (b, l, self.d_model)), jnp.ones((b, l), jnp.float32)
        mask = (batch["query_mask"] > 0).astype(jnp.float32)
        tokens = jnp.where(mask > 0, tokens, 0)
        words = nn.Embed(self.vocab_size, self.word_dim, embedding_init=self.embedding_init, name="word_embed")(tokens)
        if self.freeze_embeddings:
            words = jax.lax.stop_gradient(words)
        words = Dropout(self.dropout)(mask_fill(words, mask), deterministic=deterministic)
        use_gcn = self.use_gcn and self.num_gcn_layers > 0
        if use_gcn and self.gcn_placement == "before_rnn":
            words = self._gcn(words, batch, mask, deterministic)
        h = BiGRU(self.d_model // 2, name="query_rnn")(words, mask)  # h^q
        if use_gcn and self.gcn_placement == "after_rnn":
            h = self._gcn(h, batch, mask, deterministic)  # o^L
        return h, mask

    def encode_video(self, batch: Mapping[str, Array], deterministic: bool) -> Array:
        """Video encoder: projection -> [MultiHead(V, V, V) + V] x N -> BiGRU; returns h^v [B, T, d_model]."""
        mask = (batch["video_mask"] > 0).astype(jnp.float32)
        v = mask_fill(batch["video_feats"].astype(jnp.float32), mask)
        v = Dropout(self.dropout)(v, deterministic=deterministic)
        # The released code attends in the raw feature dim (500-d C3D); we project
        # to d_model first so that the attention width is a model setting.
        v = nn.Dense(self.d_model, name="video_proj")(v)
        if self.use_self_attention:
            for i in range(self.num_attn_layers):
                v = v + MultiHeadAttention(
                    num_heads=self.num_heads,
                    window=self.attention_window,
                    dropout_rate=self.attention_dropout,
                    name=f"self_attention_{i}",
                )(v, key_mask=mask, query_mask=mask, deterministic=deterministic)  # V^S
        return BiGRU(self.d_model // 2, name="video_rnn")(v, mask)

    @nn.compact
    def __call__(self, batch: Mapping[str, Array], *, train: bool) -> dict[str, Array]:
        """Forward pass.

        Args:
          batch: dict with video_feats [B, T, Dv], video_mask [B, T],
            query_tokens [B, L], query_mask [B, L], edge_senders / edge_receivers
            / edge_labels / edge_directions / edge_mask [B, E].
          train: enables dropout (needs a 'dropout' rng).

        Returns:
          anchor_logits [B, T, K] (confidence logits; 0 at masked anchors),
          anchor_offsets [B, T, K, 2] (start/end offsets as fractions; 0 at
          masked anchors), anchor_spans [B, T, K, 2] (see :func:`make_anchors`),
          anchor_mask [B, T, K], attention M [B, T, L] (0 at padded frames and
          words; uniform over all L positions when ``query_blind``).
        """
        self._check()
        det = not train
        vmask = (batch["video_mask"] > 0).astype(jnp.float32)
        hv = self.encode_video(batch, det)  # h^v
        o, qmask = self.encode_query(batch, det)  # o^L

        hs, attention = AdditiveAttention(self.d_model, name="aggregation")(hv, o, key_mask=qmask, query_mask=vmask)
        if self.use_cross_gate:
            hs, hv = CrossGate(name="cross_gate")(hv, hs)
        fusion = Fusion(self.fusion, self.fusion_dim or self.d_model, rank=self.d_model,
                        chunk_rows=self.fusion_chunk_rows, name="fusion")
        fused = mask_fill(fusion(hs, hv), vmask)  # f
        fused = Dropout(self.dropout)(fused, deterministic=det)
        if self.fused_rnn:
            fused = BiGRU(self.d_model // 2, name="fusion_rnn")(fused, vmask)  # h^f

        k = len(self.anchor_widths)
        logits = nn.Dense(k, name="score_head")(fused)
        offsets = nn.Dense(2 * k, name="offset_head")(fused).reshape(fused.shape[:2] + (k, 2))
        spans, amask = make_anchors(vmask, tuple(int(w) for w in self.anchor_widths))
        return {
            "anchor_logits": logits * amask,
            "anchor_offsets": offsets * amask[..., None],
            "anchor_spans": spans,
            "anchor_mask": amask,
            "attention": attention,
        }


# ----------------------------------------------------------------------------- loss / predict


def loss_fn(
    outputs: Mapping[str, Array],
    batch: Mapping[str, Array],
    *,
    step: Array | None = None,
    rng: Array | None = None,
    axis_name: str | None = None,
    label_mode: str = "iou",
    reg_mode: str = "paper",
    reg_weight: float = 1.0,
    reg_iou_threshold: float = 0.5,
) -> tuple[Array, dict[str, Array]]:
    """CMIN loss: L_align + reg_weight * L_reg.

    L_align: IoU-weighted binary cross-entropy of the confidences against the
    soft labels (:func:`anchor_labels`: best IoU over the valid ground-truth
    spans), averaged over all valid anchors of the batch. L_reg regresses each
    anchor towards its target, the ground-truth span of highest IoU with it:

    * 'paper': L1 between predicted offsets and (target - anchor) (fractions),
      summed over start and end and averaged over positive anchors (IoU >=
      reg_iou_threshold, plus the best valid anchor of every example);
    * 'released': ``RELEASED_REG_SCALE`` * SmoothL1 (beta 1, torch's default)
      between the refined anchor n (anchor + offset) and n target, in clips of
      the model's grid (n = valid clips), at the best valid anchor (argmax IoU)
      of each example only, averaged over those examples and start / end (torch's
      mean reduction); reg_iou_threshold is unused.

    Args:
      outputs: :class:`CMIN` outputs.
      batch: gt_spans [B, G, 2] (seconds), gt_spans_mask [B, G] and duration
        [B] (or gt_span [B, 2] fractions alone: one span; see
        :func:`gt_fractions`); 'released' also needs video_mask [B, T].
      label_mode: 'iou' (paper) or 'scaled' (released code).
      reg_mode: 'paper' or 'released'.
      reg_weight: weight of L_reg.
      reg_iou_threshold: IoU above which an anchor is regressed ('paper').

    Returns:
      (loss, {'loss', 'align_loss', 'reg_loss'}).
    """
    del step, rng  # Deterministic, per-example loss; axis_name: means over the global batch under pmap.
    if reg_mode not in REG_MODES:
        raise ValueError(f"reg_mode must be one of {REG_MODES}, got {reg_mode!r}")
    logits = outputs["anchor_logits"]
    spans = outputs["anchor_spans"]
    mask = (outputs["anchor_mask"] > 0).astype(logits.dtype)
    gt, gt_mask = gt_fractions(batch)

    iou, which = anchor_ious(spans, mask, gt, gt_mask)
    labels = iou if label_mode == "iou" else anchor_labels(spans, mask, gt, label_mode, gt_mask)
    bce = -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    align = weighted_mean(bce, mask, axis_name)

    b = logits.shape[0]
    flat_iou = jnp.where(mask > 0, iou, -1.0).reshape(b, -1)
    best = jax.nn.one_hot(jnp.argmax(flat_iou, axis=-1), flat_iou.shape[-1], dtype=logits.dtype)
    best = best.reshape(mask.shape) * mask
    target = jnp.einsum("btkg,bgc->btkc", jax.nn.one_hot(which, gt.shape[1], dtype=gt.dtype), gt)
    if reg_mode == "paper":
        positive = jnp.maximum(mask * (iou >= reg_iou_threshold), best)
        l1 = jnp.sum(jnp.abs(outputs["anchor_offsets"] - (target - spans)), axis=-1)
        reg = weighted_mean(l1, positive, axis_name)
    else:
        n = jnp.sum(batch["video_mask"] > 0, axis=-1).astype(logits.dtype)[:, None, None, None]
        diff = jnp.abs((spans + outputs["anchor_offsets"]) * n - target * n)
        smooth_l1 = jnp.sum(jnp.where(diff < 1.0, 0.5 * diff**2, diff - 0.5), axis=-1)
        reg = RELEASED_REG_SCALE * weighted_mean(0.5 * smooth_l1, best, axis_name)  # mean over start and end

    loss = align + reg_weight * reg
    return loss, {"loss": loss, "align_loss": align, "reg_loss": reg}


def predict_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None) -> tuple[Array, Array]:
    """Scored moment candidates: anchor + offsets, one per (clip, width).

    Args:
      outputs: :class:`CMIN` outputs.
      batch: unused (kept for the common predict signature).

    Returns:
      spans [B, T*K, 2] (fractions of the valid length, clipped to [0, 1],
      start <= end) and scores [B, T*K] (sigmoid confidences; ``MASKED_SCORE``
      = -inf for masked anchors: never ranked or kept).
    """
    del batch
    spans = outputs["anchor_spans"] + outputs["anchor_offsets"]
    spans = jnp.sort(jnp.clip(spans, 0.0, 1.0), axis=-1)
    scores = jnp.where(outputs["anchor_mask"] > 0, jax.nn.sigmoid(outputs["anchor_logits"]), MASKED_SCORE)
    b = spans.shape[0]
    return spans.reshape(b, -1, 2), scores.reshape(b, -1)


def evidence_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None) -> dict[str, dict[str, Array]]:
    """What a picture shows of a prediction (``jvmr.visualize``): ``curves`` {name: [B, T]} per clip, the
    best anchor confidence centred on each clip (0 where no anchor fits), and ``attention``
    {name: [B, T, L]}, the video-to-word attention M of the aggregation (the seed's qualitative figure)."""
    del batch
    confidence = jnp.max(jax.nn.sigmoid(outputs["anchor_logits"]) * outputs["anchor_mask"], axis=-1)
    return {"curves": {"anchor confidence (best width)": confidence},
            "attention": {"video-to-word attention": outputs["attention"]}}
