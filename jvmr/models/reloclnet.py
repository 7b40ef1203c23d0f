"""ReLoCLNet: Retrieval and Localization Network with Contrastive Learning (Zhang et al., SIGIR 2021).

Video corpus moment retrieval with unimodal encoders: the query and every video
are encoded separately, so a corpus is encoded once and a query is scored against
all of it with matrix products (``jvmr.corpus``). Seed 001_f2458cb6ebe09aba; the
released code's facts are in the reference notes (methods.md 1(b)). Notation: B
queries (and their videos) per batch, L words, T clips, M streams (``v`` visual,
``s`` subtitles when the data has them), d = ``hidden_size``.

Query encoder. Token features (a learned / GloVe word table, or pre-extracted
token features such as TVR's 768-d RoBERTa tokens) -> LinearLayer -> positions ->
``num_query_layers`` transformer blocks -> Q~ [B, L, d]; one modular vector per
stream by additive attention (one scorer row per stream):

    alpha^q_m = softmax_i(W_{m,alpha} q~_i),   q_m = sum_i alpha^q_{m,i} q~_i.

Context encoder, per stream m (separate weights): LinearLayer -> positions ->
self-attention block -> co-attention block (queries from stream m, keys and values
from the other stream; skipped with one stream) -> a block giving H'_m (the
"cross-modal representations" the contrastive terms read) -> a refinement block
giving H_m. A block is the released code's BertAttention: multi-head attention,
dropout, residual, LayerNorm (``ffn_dim > 0`` adds a feed-forward sub-layer).

Video retrieval (VR). phi_m[t] = cos(h_{m,t}, q_m), phi_m = max_t phi_m[t],
phi = mean_m phi_m; hinge ranking loss over in-batch negative videos (phi') and
negative queries (phi''):

    L^VR = max(0, Delta + mean phi' - phi) + max(0, Delta + mean phi'' - phi).

The paper averages its N negatives; the released code samples one per query
(random, then one of the ``hard_pool_size`` hardest after
``hard_negative_start_step``): ``loss.vr_negatives``.

Moment localisation (ML). q'_m = W_m q_m + b_m, S_m[t] = h_{m,t} . q'_m,
S = mean_m S_m; S_start = Conv1D_start(S), S_end = Conv1D_end(S) (1 channel,
kernel ``conv_kernel_size``, no bias), softmax over the valid clips,
L^ML = (CE_start + CE_end) / 2.

VideoCL. c_m = sum_t alpha^c_{m,t} h'_{m,t}, alpha^c_m = softmax_t(w_m . h'_{m,t});
InfoNCE over the batch with score f(c)^T g(q) (f, g linear maps):

    I^e_m = log( e^{s(c_i, q_i)} / (e^{s(c_i, q_i)} + sum_{j in N(i)} e^{s(c_j, q_i)} + e^{s(c_i, q_j)}) ),

N(i) = the batch examples of another video than i's (both directions, as the
released MIL-NCE), L^VideoCL = -mean_m I^e_m. ``video_cl_reading='released'``
uses the released score instead: max over clips of h'_{m,t} . q_m (no pooling, no f / g).

FrameCL. The JSD mutual-information estimator between the query and the clips
inside (positive) / outside (negative) the moment, C(q, h') = q_m . h'_{m,t}
(``loss.cl_critic='scaled_dot'``: / sqrt(d), also for VideoCL's scores):

    I^a_m = E_inside[-sp(-C)] - E_outside[sp(C)],   L^FrameCL = -mean_m I^a_m.

Both terms average one estimator per stream, as the paper writes; the released code
averages the streams' scores and applies one estimator (``loss.cl_stream_fusion='scores'``),
which a query about one stream only (TVR's ``v`` / ``t``) can still satisfy.

Every example whose video differs is a negative; an example is never its own
video's negative: the batch's ``video_index`` (a hash of the video id) decides,
so two queries of one video in a batch are neither each other's negatives nor
each other's positives.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jvmr.models import layers
from jvmr.models.layers import (FeedForward, LearnedPositionalEmbedding, MultiHeadAttention, WordEmbedding,
                                l2_normalize, mask_fill, masked_log_softmax, masked_softmax, weighted_mean)
from jvmr.models.spans import MASKED_SCORE, boundary_evidence, boundary_indices, decode_spans, segment_labels

Array = jax.Array

STREAMS = ("video", "subtitle")
VIDEO_CL_READINGS = ("paper", "released")
VR_NEGATIVES = ("mean", "sampled")
CL_CRITICS = ("dot", "scaled_dot")
CL_STREAM_FUSIONS = ("estimators", "scores")
COSINE_EPS = 1e-6


# ----------------------------------------------------------------------------- layers


class LinearLayer(nn.Module):
    """The released input projection: LayerNorm -> dropout -> Dense -> ReLU ([..., Din] -> [..., features])."""

    features: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        x = nn.LayerNorm(name="norm")(x)
        x = layers.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return nn.relu(nn.Dense(self.features, name="dense")(x))


class AttentionBlock(nn.Module):
    """Post-LN transformer block: x <- LN(x + Dropout(MHA(x, kv))) [then x <- LN(x + FFN(x))].

    ``kv`` defaults to ``x`` (self-attention). Outputs at padded positions are zero,
    and padded keys get no weight, so padding never changes valid outputs.
    """

    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout: float = 0.0
    ffn_dim: int = 0

    @nn.compact
    def __call__(self, x: Array, mask: Array, kv: Array | None = None, kv_mask: Array | None = None, *,
                 deterministic: bool = True) -> Array:
        """Args: x [B, T, d], mask [B, T], kv [B, S, d], kv_mask [B, S]. Returns [B, T, d]."""
        kv, kv_mask = (x, mask) if kv is None else (kv, kv_mask)
        y = MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout, name="attention")(
            x, kv, key_mask=kv_mask, query_mask=mask, deterministic=deterministic)
        y = layers.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x = nn.LayerNorm(name="norm")(x + y)
        if self.ffn_dim > 0:
            y = FeedForward(x.shape[-1], hidden=self.ffn_dim, dropout_rate=self.dropout_rate, name="ffn")(
                x, deterministic=deterministic)
            y = layers.Dropout(self.dropout_rate)(y, deterministic=deterministic)
            x = nn.LayerNorm(name="ffn_norm")(x + y)
        return mask_fill(x, mask)


def attention_pool(logits: Array, x: Array, mask: Array) -> Array:
    """sum_t softmax_t(logits)[t] x_t over valid t: logits [B, T, M], x [B, T, d] or [B, M, T, d] -> [B, M, d]."""
    weights = masked_softmax(logits, (mask > 0)[:, :, None], axis=1)  # [B, T, M]
    if x.ndim == 3:
        return jnp.einsum("btm,btd->bmd", weights, x)
    return jnp.einsum("btm,bmtd->bmd", weights, x)


# ----------------------------------------------------------------------------- scores (pure functions)


def retrieval_scores(query: Array, context: Array, context_mask: Array) -> Array:
    """phi [Bq, Bv] = mean_m max_t cos(q_m, h_{m,t}) of every query against every video.

    Args: query [Bq, M, d] (q_m); context [Bv, M, T, d] (H_m); context_mask [Bv, T].
    A video with no valid clip scores -1 (the lowest cosine).
    """
    sims = jnp.einsum("qmd,vmtd->qvmt", l2_normalize(query, eps=COSINE_EPS), l2_normalize(context, eps=COSINE_EPS))
    sims = jnp.where((context_mask > 0)[None, :, None, :], sims, -1.0)
    return jnp.mean(jnp.max(sims, axis=-1), axis=-1)


def localization_logits(local_query: Array, context: Array, context_mask: Array, conv_start: Array,
                        conv_end: Array) -> tuple[Array, Array]:
    """Start / end logits [..., T] from S = mean_m H_m q'_m and two 1-channel convolutions.

    Args: local_query [B, M, d] (q'_m); context [B, M, T, d]; context_mask [B, T];
    conv_start, conv_end [K] kernels (odd K, zero "same" padding). Padded clips are
    zero in S, exactly like the convolution's own padding, so extra padding never
    changes valid logits; padded logits are returned as they are (mask them).
    """
    sim = clip_similarity(local_query, context, context_mask)
    return localization_conv(sim, conv_start), localization_conv(sim, conv_end)


def clip_similarity(local_query: Array, context: Array, context_mask: Array) -> Array:
    """S [B, T] = mean_m H_m q'_m: each clip's similarity to the query (0 at padded clips)."""
    return mask_fill(jnp.mean(jnp.einsum("bmd,bmtd->bmt", local_query, context), axis=1), context_mask)


def localization_conv(sim: Array, kernel: Array) -> Array:
    """1-channel "same" convolution (zero padding, no bias) of sim [B, T] with an odd kernel [K] -> [B, T]."""
    k = kernel.shape[0]
    padded = jnp.pad(sim, ((0, 0), (k // 2, k // 2)))
    return sum(padded[:, i: i + sim.shape[1]] * kernel[i] for i in range(k))  # shifted slices (one fused loop)


CONV_INITS = ("normal", "torch")


def conv_kernel_init(kind: str):
    """Initialiser of a start / end kernel [K]: 'normal' N(0, 0.02) (the released code's initializer_range,
    which it applies to its linear layers), or 'torch' U(-1/sqrt(K), 1/sqrt(K)) (torch.nn.Conv1d's default
    for one input channel, which the released code keeps for these convolutions)."""
    if kind == "normal":
        return nn.initializers.normal(0.02)
    if kind == "torch":
        def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
            bound = 1.0 / shape[0] ** 0.5
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        return init
    raise ValueError(f"conv_init must be one of {CONV_INITS}, got {kind!r}")


# ----------------------------------------------------------------------------- model


class ReLoCLNet(nn.Module):
    """ReLoCLNet over a batch of (video, query) pairs (module docstring for the equations).

    Attributes:
      vocab_size, word_dim: the word table (unused with ``use_query_features``).
      hidden_size: d.
      num_heads: heads of every attention block.
      num_query_layers: transformer blocks of the query encoder (paper: two).
      ffn_dim: feed-forward inner size inside each block (0 = none, as released).
      input_dropout: dropout inside the LinearLayer projections; dropout: after attention.
      attention_dropout: on attention weights.
      conv_kernel_size: width K of the start / end convolutions (released: 5).
      conv_init: their initialiser (:func:`conv_kernel_init`; released: 'torch').
      use_subtitles: a second, subtitle stream (the batch's ``subtitle_feats``).
      use_cross_attention: the co-attention block between the streams (with two streams).
      use_query_features: the query is the batch's pre-extracted ``query_feats`` tokens.
      video_cl_reading: 'paper' (attention-pooled c_m, linear f and g) or 'released'.
      max_positions: rows of the learned position tables (0 = the sequence length).
      min_span_len, max_span_len, num_candidates: decoding of the per-query SVMR
        candidates (clips; released: 2 <= j - i < 16 boundaries at 1.5 s).
      freeze_embeddings: no gradient into the word table.
    """

    vocab_size: int = 0
    word_dim: int = 300
    hidden_size: int = 384
    num_heads: int = 8
    num_query_layers: int = 2
    ffn_dim: int = 0
    input_dropout: float = 0.1
    dropout: float = 0.1
    attention_dropout: float = 0.1
    conv_kernel_size: int = 5
    conv_init: str = "torch"
    use_subtitles: bool = False
    use_cross_attention: bool = True
    use_query_features: bool = False
    video_cl_reading: str = "paper"
    max_positions: int = 0
    min_span_len: int = 1
    max_span_len: int = 0
    num_candidates: int = 100
    freeze_embeddings: bool = False

    @property
    def streams(self) -> tuple[str, ...]:
        return STREAMS if self.use_subtitles else STREAMS[:1]

    def _check(self) -> None:
        if self.video_cl_reading not in VIDEO_CL_READINGS:
            raise ValueError(f"video_cl_reading must be one of {VIDEO_CL_READINGS}, got {self.video_cl_reading!r}")
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd and positive, got {self.conv_kernel_size}")
        if not self.use_query_features and self.vocab_size < 1:
            raise ValueError("vocab_size is required unless use_query_features")

    def _block(self, name: str) -> AttentionBlock:
        return AttentionBlock(self.num_heads, self.dropout, self.attention_dropout, self.ffn_dim, name=name)

    def _positions(self, name: str) -> LearnedPositionalEmbedding:
        return LearnedPositionalEmbedding(max_len=self.max_positions, name=name)

    @nn.compact
    def encode_query(self, batch: Mapping[str, Array], *, train: bool = False) -> dict[str, Array]:
        """-> query [B, M, d] (q_m, retrieval and contrastive terms), local_query [B, M, d] (q'_m)."""
        self._check()
        det = not train
        if self.use_query_features:
            mask = batch["query_feats_mask"]
            tokens = mask_fill(batch["query_feats"], mask)
        else:
            mask = batch["query_mask"]
            tokens = WordEmbedding(self.vocab_size, self.word_dim, freeze=self.freeze_embeddings,
                                   name="word_embed")(batch["query_tokens"], mask)
        x = LinearLayer(self.hidden_size, self.input_dropout, name="query_input")(tokens, deterministic=det)
        x = mask_fill(self._positions("query_positions")(x), mask)
        for i in range(self.num_query_layers):
            x = self._block(f"query_encoder_{i}")(x, mask, deterministic=det)
        m = len(self.streams)
        query = attention_pool(nn.Dense(m, name="modular_attention")(x), x, mask)  # [B, M, d]
        local = jnp.stack([nn.Dense(self.hidden_size, name=f"{s}_localization_query")(query[:, i])
                           for i, s in enumerate(self.streams)], axis=1)
        out = {"query": query, "local_query": local}
        if self.video_cl_reading == "paper":
            out["video_cl_query"] = jnp.stack([nn.Dense(self.hidden_size, name=f"{s}_video_cl_g")(query[:, i])
                                               for i, s in enumerate(self.streams)], axis=1)
        return out

    @nn.compact
    def encode_context(self, batch: Mapping[str, Array], *, train: bool = False) -> dict[str, Array]:
        """-> context [B, M, T, d] (H_m), context_mid [B, M, T, d] (H'_m) and, for the paper's
        VideoCL, video_cl_context [B, M, d] (f(c_m)). Streams share the video's clip mask."""
        self._check()
        det = not train
        mask = batch["video_mask"]
        inputs = {"video": batch["video_feats"]}
        if self.use_subtitles:
            inputs["subtitle"] = batch["subtitle_feats"]
        first = {}
        for s in self.streams:
            x = LinearLayer(self.hidden_size, self.input_dropout, name=f"{s}_input")(
                mask_fill(inputs[s], mask), deterministic=det)
            x = mask_fill(self._positions(f"{s}_positions")(x), mask)
            first[s] = self._block(f"{s}_encoder_0")(x, mask, deterministic=det)
        mids, finals, pooled = [], [], []
        for s in self.streams:
            x = first[s]
            if len(self.streams) > 1 and self.use_cross_attention:
                other = first[[o for o in self.streams if o != s][0]]
                x = self._block(f"{s}_cross_encoder")(x, mask, other, mask, deterministic=det)
            mid = self._block(f"{s}_encoder_1")(x, mask, deterministic=det)
            mids.append(mid)
            finals.append(self._block(f"{s}_encoder_2")(mid, mask, deterministic=det))
            if self.video_cl_reading == "paper":
                c = attention_pool(nn.Dense(1, name=f"{s}_context_attention")(mid), mid, mask)[:, 0]
                pooled.append(nn.Dense(self.hidden_size, name=f"{s}_video_cl_f")(c))
        out = {"context": jnp.stack(finals, axis=1), "context_mid": jnp.stack(mids, axis=1)}
        if pooled:
            out["video_cl_context"] = jnp.stack(pooled, axis=1)
        return out

    @nn.compact
    def localize(self, local_query: Array, context: Array, context_mask: Array) -> tuple[Array, Array]:
        """Start / end logits [B, T] of each (query, video) pair (:func:`localization_logits`)."""
        k = self.conv_kernel_size
        init = conv_kernel_init(self.conv_init)
        return localization_logits(local_query, context, context_mask, self.param("conv_start", init, (k,)),
                                   self.param("conv_end", init, (k,)))

    def __call__(self, batch: Mapping[str, Array], *, train: bool) -> dict[str, Array]:
        """Encodes the batch's queries and videos and localises each query in its own video.

        Returns the encodings (see ``encode_query`` / ``encode_context``), ``video_mask``,
        ``start_logits`` / ``end_logits`` [B, T], and the decoded SVMR candidates
        ``candidate_spans`` [B, N, 2] / ``candidate_scores`` [B, N] (P_start P_end in log space).
        The in-batch score matrices are built by :func:`loss_fn` from these encodings.
        """
        out = dict(self.encode_query(batch, train=train))
        out.update(self.encode_context(batch, train=train))
        mask = batch["video_mask"]
        start, end = self.localize(out["local_query"], out["context"], mask)
        spans, scores = decode_spans(start, end, mask, min_span_len=self.min_span_len,
                                     max_span_len=self.max_span_len, num_candidates=self.num_candidates)
        out.update(video_mask=mask, start_logits=start, end_logits=end, candidate_spans=spans,
                   candidate_scores=scores)
        return out


# ----------------------------------------------------------------------------- losses


def negative_mask(video_index: Array, example_mask: Array, column_index: Array | None = None,
                  column_mask: Array | None = None) -> Array:
    """[B, Bc] True where example j (a column) is a valid negative of example i: another video, both real.

    Columns default to the rows (in-batch negatives); under pmap they are the global batch.
    """
    if column_index is None:
        column_index, column_mask = video_index, example_mask
    return ((video_index[:, None] != column_index[None, :]) & (example_mask > 0)[:, None]
            & (column_mask > 0)[None, :])


def _hinge_terms(q2v: Array, v2q: Array, positive: Array, negatives: Array, margin: float, *, mode: str,
                 rng: Array | None, hard_pool_size: int, row_index: Array | None = None) -> tuple[Array, Array]:
    """Both hinge directions for rows i: q2v[i, j] = phi(query i, video j), v2q[i, j] = phi(query j, video i).

    ``row_index`` [B]: the rows' places among the columns when the columns are the global batch (pmap):
    sampled negatives are then drawn from the global batch's draws, as on one device."""
    if mode not in VR_NEGATIVES:
        raise ValueError(f"loss.vr_negatives must be one of {VR_NEGATIVES}, got {mode!r}")
    if mode == "sampled" and rng is None:
        raise ValueError("vr_negatives='sampled' needs an rng")

    def one_direction(s, key):  # row i holds i's negatives' scores
        has = jnp.any(negatives, axis=1)
        if mode == "mean":
            neg = jnp.sum(jnp.where(negatives, s, 0.0), axis=1) / jnp.maximum(jnp.sum(negatives, axis=1), 1)
        else:
            allowed = negatives
            if hard_pool_size > 0:
                ranked = jnp.where(negatives, s, -jnp.inf)
                rank = jnp.argsort(jnp.argsort(-ranked, axis=1), axis=1)
                allowed = negatives & (rank < hard_pool_size)
            if row_index is None:
                uniform = jax.random.uniform(key, s.shape)
            else:  # this device's rows of the global [Bc, Bc] draw
                uniform = jax.random.uniform(key, (s.shape[1], s.shape[1]))[row_index]
            draw = jnp.where(allowed, uniform, -1.0)
            neg = jnp.take_along_axis(s, jnp.argmax(draw, axis=1)[:, None], axis=1)[:, 0]
        return jnp.where(has, jax.nn.relu(margin + neg - positive), 0.0)

    keys = jax.random.split(rng, 2) if rng is not None else (None, None)
    return one_direction(q2v, keys[0]), one_direction(v2q, keys[1])


def hinge_ranking(scores: Array, negatives: Array, margin: float, *, mode: str = "mean",
                  rng: Array | None = None, hard_pool_size: int = 0) -> tuple[Array, Array]:
    """Per-example hinge terms [B] of both directions, for in-batch scores [Bq, Bv] (positives on the diagonal).

    mode 'mean' (the paper): max(0, margin + mean_j phi'_ij - phi_ii) with phi' over the
    negatives j of i; 'sampled' (released): one negative drawn uniformly per example
    (``rng``), among the ``hard_pool_size`` highest-scoring negatives when > 0.
    Returns (negative-video term, negative-query term); 0 for an example without negatives.
    """
    return _hinge_terms(scores, scores.T, jnp.diagonal(scores), negatives, margin, mode=mode, rng=rng,
                        hard_pool_size=hard_pool_size)


def _info_nce_terms(q2v: Array, v2q: Array, positive: Array, negatives: Array) -> Array:
    """-log e^{pos_i} / (e^{pos_i} + sum_{j in N(i)} e^{q2v_ij} + e^{v2q_ij}) for rows i."""
    everything = jnp.concatenate([positive[:, None], jnp.where(negatives, q2v, -jnp.inf),
                                  jnp.where(negatives, v2q, -jnp.inf)], axis=1)
    return jax.nn.logsumexp(everything, axis=1) - positive


def video_contrastive(scores: Array, negatives: Array) -> Array:
    """InfoNCE terms [B]: -log e^{s_ii} / (e^{s_ii} + sum_{j in N(i)} e^{s_ji} + e^{s_ij}).

    scores [Bv, Bq] (video i / query j); negatives [B, B] (:func:`negative_mask`).
    """
    return _info_nce_terms(scores.T, scores, jnp.diagonal(scores), negatives)


def frame_contrastive(scores: Array, inside: Array, mask: Array) -> Array:
    """JSD estimator terms [B]: -(E_inside[-sp(-C)] - E_outside[sp(C)]) over valid clips.

    scores [B, T] (C(q, h'_t)); inside [B, T] 1 on the moment's clips; mask [B, T].
    An empty side contributes 0.
    """
    valid = mask > 0
    pos = valid & (inside > 0)
    neg = valid & (inside <= 0)
    e_pos = jnp.sum(jnp.where(pos, -jax.nn.softplus(-scores), 0.0), 1) / jnp.maximum(jnp.sum(pos, 1), 1)
    e_neg = jnp.sum(jnp.where(neg, jax.nn.softplus(scores), 0.0), 1) / jnp.maximum(jnp.sum(neg, 1), 1)
    return -(e_pos - e_neg)


def loss_fn(
    outputs: Mapping[str, Array],
    batch: Mapping[str, Array],
    *,
    step: Array | None = None,
    rng: Array | None = None,
    axis_name: str | None = None,
    global_negatives: bool = True,
    use_video_retrieval: bool = True,
    use_localization: bool = True,
    use_video_cl: bool = True,
    use_frame_cl: bool = True,
    retrieval_weight: float = 1.0,
    localization_weight: float = 0.01,
    video_cl_weight: float = 0.03,
    frame_cl_weight: float = 0.03,
    margin: float = 0.1,
    vr_negatives: str = "mean",
    hard_negative_start_step: int = -1,
    hard_pool_size: int = 20,
    cl_critic: str = "dot",
    cl_stream_fusion: str = "estimators",
) -> tuple[Array, dict[str, Array]]:
    """L = w_VR L^VR + w_ML L^ML + w_VideoCL L^VideoCL + w_FrameCL L^FrameCL (each term switchable;
    ReLoNet = both CL terms off). Negatives are the batch's other videos (:func:`negative_mask`);
    with ``vr_negatives='sampled'`` hard negatives start at ``hard_negative_start_step`` (-1: never).
    Under pmap (``axis_name``) the negatives come from the global batch (all-gathered; gradients
    flow back to the device that holds them) unless ``global_negatives=False``.
    ``cl_critic`` scores of both contrastive terms: 'dot' (the released code's raw dot products) or
    'scaled_dot' (divided by sqrt(d), the attention logits' scaling; the paper leaves its critic open).
    ``cl_stream_fusion``: 'estimators' (the paper: one estimator per stream, averaged, I = (I_v + I_s) / 2)
    or 'scores' (the released code: the streams' critic scores averaged, then one estimator).
    Every mean over examples is over the global batch under pmap.
    Returns (loss, metrics of every active term)."""
    weighted_mean = functools.partial(layers.weighted_mean, axis_name=axis_name)
    if cl_critic not in CL_CRITICS:
        raise ValueError(f"loss.cl_critic must be one of {CL_CRITICS}, got {cl_critic!r}")
    if cl_stream_fusion not in CL_STREAM_FUSIONS:
        raise ValueError(f"loss.cl_stream_fusion must be one of {CL_STREAM_FUSIONS}, got {cl_stream_fusion!r}")
    fuse = (lambda s: jnp.mean(s, axis=0, keepdims=True)) if cl_stream_fusion == "scores" else (  # noqa: E731
        lambda s: s)  # per-stream scores [M, ...] -> the estimators' inputs
    critic_scale = 1.0 if cl_critic == "dot" else outputs["query"].shape[-1] ** -0.5
    weights = batch["example_mask"].astype(jnp.float32)
    mask = outputs["video_mask"]
    rows = jnp.arange(weights.shape[0])
    if axis_name is not None and global_negatives:
        cols = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)  # noqa: E731
        own = rows + jax.lax.axis_index(axis_name) * weights.shape[0]  # each row's column in the global batch
    else:
        cols = lambda x: x  # noqa: E731
        own = rows
    negatives = negative_mask(batch["video_index"], weights, cols(batch["video_index"]), cols(weights))
    metrics: dict[str, Array] = {}
    total = jnp.zeros((), jnp.float32)
    if use_video_retrieval:
        q2v = retrieval_scores(outputs["query"], cols(outputs["context"]), cols(mask))  # [B, Bc]
        v2q = retrieval_scores(cols(outputs["query"]), outputs["context"], mask).T  # video i vs query j
        positive = q2v[rows, own]
        hinge = functools.partial(_hinge_terms, q2v, v2q, positive, negatives, margin, row_index=own)
        if vr_negatives == "sampled" and hard_negative_start_step >= 0:
            if step is None:
                raise ValueError("hard negatives need the training step")
            easy = hinge(mode="sampled", rng=rng, hard_pool_size=0)
            hard = hinge(mode="sampled", rng=rng, hard_pool_size=hard_pool_size)
            late = step >= hard_negative_start_step
            ctx, qry = (jnp.where(late, h, e) for h, e in zip(hard, easy))
        else:
            ctx, qry = hinge(mode=vr_negatives, rng=rng, hard_pool_size=0)
        metrics["retrieval_loss"] = weighted_mean(ctx + qry, weights)
        total = total + retrieval_weight * metrics["retrieval_loss"]
    if use_localization:
        start, end = boundary_indices(batch["gt_span"], mask)
        nll = lambda logits, index: -jnp.take_along_axis(  # noqa: E731
            masked_log_softmax(logits, mask), index[:, None], axis=1)[:, 0]
        metrics["localization_loss"] = weighted_mean(
            0.5 * (nll(outputs["start_logits"], start) + nll(outputs["end_logits"], end)), weights)
        total = total + localization_weight * metrics["localization_loss"]
    if use_video_cl:
        if "video_cl_context" in outputs:  # paper: f(c_m) . g(q_m) per stream -> [M, B, Bc]
            def vcl(video, query, video_mask):
                del video_mask
                return critic_scale * jnp.einsum("vmd,qmd->mvq", video, query)
            video, query = outputs["video_cl_context"], outputs["video_cl_query"]
        else:  # released: max over clips of h'_{m,t} . q_m
            def vcl(video, query, video_mask):
                s = critic_scale * jnp.einsum("vmtd,qmd->mvqt", video, query)
                return jnp.max(jnp.where((video_mask > 0)[None, :, None, :], s, -jnp.inf), axis=-1)
            video, query = outputs["context_mid"], outputs["query"]
        q2v = fuse(jnp.swapaxes(vcl(cols(video), query, cols(mask)), 1, 2))  # [M, B, Bc]: query i vs video j
        v2q = fuse(vcl(video, cols(query), mask))  # [M, B, Bc]: video i vs query j
        positive = q2v[:, rows, own]
        terms = jnp.mean(jax.vmap(_info_nce_terms, in_axes=(0, 0, 0, None))(q2v, v2q, positive, negatives), axis=0)
        metrics["video_cl_loss"] = weighted_mean(terms, weights)
        total = total + video_cl_weight * metrics["video_cl_loss"]
    if use_frame_cl:
        start, end = boundary_indices(batch["gt_span"], mask)
        inside = segment_labels(start, end, mask.shape[1])
        scores = fuse(critic_scale * jnp.einsum("bmtd,bmd->mbt", outputs["context_mid"], outputs["query"]))
        terms = jnp.mean(jax.vmap(frame_contrastive, in_axes=(0, None, None))(scores, inside, mask), axis=0)
        metrics["frame_cl_loss"] = weighted_mean(terms, weights)
        total = total + frame_cl_weight * metrics["frame_cl_loss"]
    metrics["loss"] = total
    return total, metrics


def predict_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None) -> tuple[Array, Array]:
    """Per-query (SVMR) candidates in the query's own video: spans [B, N, 2] (fractions) and
    scores [B, N] (log P_start + log P_end, ``MASKED_SCORE`` for impossible pairs)."""
    del batch
    return outputs["candidate_spans"], outputs["candidate_scores"]


def evidence_fn(outputs: Mapping[str, Array], batch: Mapping[str, Array] | None = None) -> dict[str, dict[str, Array]]:
    """Per-clip ``curves`` [B, T] for pictures (``jvmr.visualize``): the clip similarities S to the query
    (the map both boundary convolutions read, and FrameCL's scores with the released reading) and
    P_start, P_end."""
    del batch
    mask = outputs["video_mask"]
    curves = {"clip similarity": clip_similarity(outputs["local_query"], outputs["context"], mask)}
    curves.update(boundary_evidence(outputs["start_logits"], outputs["end_logits"], mask))
    return {"curves": curves}


def model_inputs(model_config: Any) -> tuple[str, ...]:
    """Batch groups this model reads beyond the common keys (``jvmr.data.pipeline``)."""
    groups = ["video_index"]
    if model_config.get("use_subtitles", False):
        groups.append("subtitles")
    if model_config.get("use_query_features", False):
        groups.append("query_features")
    return tuple(groups)

