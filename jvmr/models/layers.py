"""Shared Flax (linen) layers for the moment-retrieval models.

Everything here is model-agnostic and works on padded batches described by
float masks (1.0 = valid, 0.0 = padding) whose valid positions form a prefix:

* :func:`masked_softmax`, :func:`sequence_lengths`, :func:`mask_fill` -- helpers.
* :class:`MultiHeadAttention` -- masked scaled dot-product multi-head attention
  (Vaswani et al. 2017), optionally restricted to a local band |i - j| <= window:

      Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
      MultiHead(Q, K, V) = W^O Concat(head_1, ..., head_H),
      head_h = Attention(W^Q_h Q, W^K_h K, W^V_h V).

* :class:`AdditiveAttention` -- additive ("tanh") attention that aggregates a
  key sequence for every query position:

      M_ij = softmax_j( w^T tanh(W_1 q_i + W_2 k_j + b) ),   a_i = sum_j M_ij k_j.

* :class:`Recurrence` -- a GRU / LSTM whose input projections are one matrix
  product over all steps (only the recurrent half runs inside the scan).
* :class:`BiGRU` -- bidirectional GRU over a padded batch; the backward
  direction starts at the last valid step of each sequence.
* :class:`BiLSTM` -- the same with LSTM cells.
* :func:`masked_log_softmax` -- log-probabilities over valid positions only.
* :class:`LearnedPositionalEmbedding` -- trainable absolute position table added
  to a sequence (BERT).
* :class:`FeedForward` -- position-wise feed-forward block (one or two layers).
* :class:`WordEmbedding` -- word-table lookup for padded queries (freezable).
* :func:`dense`, :func:`partitioned`, :func:`constrain` -- parameters and
  activations with logical axis names (``jvmr.sharding`` maps them to the mesh).

Padding never changes valid outputs: padded inputs are replaced by zeros before
use (so garbage, even inf/NaN, in padded slots is harmless), padded keys get no
attention weight, and outputs at padded positions are zeroed.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Any]
LogicalAxes = tuple[str | None, ...]


# ----------------------------------------------------------------------------- sharding names
# Logical axes (mapped to mesh axes by ``jvmr.sharding``'s rules): 'batch', 'length', 'embed'
# (model width), 'heads' (attention projection outputs H * d_k), 'mlp' (inner layers, gates),
# 'fusion' (bilinear fusion outputs), 'conv_out' (2D-map channels), 'vocab'. Without rules
# (pmap, tests, one device) the names are inert metadata.


def partitioned(init: Initializer, axes: LogicalAxes) -> Initializer:
    """``init`` whose parameter carries logical axis names (``nn.with_logical_partitioning``)."""
    return nn.with_logical_partitioning(init, axes)


def dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool = True,
          kernel_init: Initializer = nn.initializers.lecun_normal(), name: str | None = None) -> nn.Dense:
    """``nn.Dense`` whose kernel [Din, features] is named ``axes`` and whose bias is named ``axes[1]``."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=partitioned(kernel_init, axes),
                    bias_init=partitioned(nn.initializers.zeros_init(), (axes[1],)), name=name)


def constrain(x: Array, axes: LogicalAxes) -> Array:
    """Sharding constraint by logical names (a no-op outside ``jvmr.sharding.activate``)."""
    return nn.with_logical_constraint(x, axes)


def sequence_lengths(mask: Array) -> Array:
    """Number of valid positions per row of a prefix mask.

    Args:
      mask: [..., T] float (or bool) mask, 1 = valid.

    Returns:
      [...] int32 lengths.
    """
    return jnp.sum(mask > 0, axis=-1).astype(jnp.int32)


def mask_fill(x: Array, mask: Array, value: float = 0.0) -> Array:
    """Replaces padded positions of ``x`` by ``value`` (robust to inf/NaN garbage).

    Args:
      x: [..., T, D] (or [..., T]) array.
      mask: [..., T] mask, 1 = valid; broadcast over the trailing feature axis
        when ``x`` has one more dimension than ``mask``.
      value: fill value.

    Returns:
      ``x`` with padded positions set to ``value``.
    """
    m = mask > 0
    if x.ndim == m.ndim + 1:
        m = m[..., None]
    return jnp.where(m, x, jnp.asarray(value, x.dtype))


def weighted_mean(x: Array, weights: Array, axis_name: str | None = None) -> Array:
    """sum(x * weights) / max(sum(weights), 1): a mean over the real examples (or cells) of a padded batch.

    With ``axis_name`` (a pmap axis of n devices), each device returns n * its sum / the global weight, so
    that the mean over devices of the values, and of their gradients, is the mean over the global batch
    (what one device, or jit over a mesh, computes), whatever the devices' shares of the weight.
    """
    total, count = jnp.sum(x * weights), jnp.sum(weights)
    if axis_name is not None:
        count = jax.lax.psum(count, axis_name)
        total = total * jax.lax.psum(1, axis_name)
    return total / jnp.maximum(count, 1.0)


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
    """x / max(|x|, eps) along ``axis``, with finite gradients at x = 0 (padded rows are exactly zero)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def masked_softmax(logits: Array, mask: Array | None, axis: int = -1) -> Array:
    """Softmax over ``axis`` restricted to positions where ``mask`` is non-zero.

    Rows whose every position is masked return all zeros (never NaN).

    Args:
      logits: array of logits.
      mask: array broadcastable to ``logits`` (1 = keep), or None.
      axis: axis to normalise over.

    Returns:
      Probabilities with the shape of ``logits``; exactly 0 at masked positions.
    """
    if mask is None:
        return jax.nn.softmax(logits, axis=axis)
    keep = jnp.broadcast_to(mask > 0, logits.shape)
    big_neg = jnp.finfo(logits.dtype).min
    logits = jnp.where(keep, logits, big_neg)
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))
    e = jnp.where(keep, jnp.exp(logits), 0.0)
    denom = jnp.sum(e, axis=axis, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


def band_mask(num_queries: int, num_keys: int, window: int) -> Array:
    """[Tq, Tk] boolean local-attention mask |i - j| <= window (all True if window <= 0)."""
    if window <= 0:
        return jnp.ones((num_queries, num_keys), bool)
    i = jnp.arange(num_queries)[:, None]
    j = jnp.arange(num_keys)[None, :]
    return jnp.abs(i - j) <= window


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1: Array, k2: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al., SC'11; JAX's PRNG) on uint32 arrays, rounds unrolled."""
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for j in range(5):
        for r in _THREEFRY_ROTATIONS[j % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r)))
        x0, x1 = x0 + ks[(j + 1) % 3], x1 + ks[(j + 2) % 3] + jnp.uint32(j + 1)
    return x0, x1


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """``jax.random.bits(key, shape, jnp.uint32)``, bit for bit, computed in one fused kernel.

    On CPU, JAX lowers its threefry as a loop over the rounds, a pass over memory each; here the rounds
    of a threefry key are unrolled into element-wise code over the same counters (the flat index of each
    element, as ``jax_threefry_partitionable`` numbers them), about 4x faster on this CPU. Other PRNG
    implementations, the non-partitionable numbering, and arrays of 2^32 elements or more go to
    ``jax.random.bits``.
    """
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32 key (jax.random.PRNGKey)
        key = jax.random.wrap_key_data(key)
    size = math.prod(shape)
    if (str(jax.random.key_impl(key)) != "threefry2x32" or not jax.config.jax_threefry_partitionable
            or size >= 2**32):
        return jax.random.bits(key, shape, jnp.uint32)
    k1, k2 = jax.random.key_data(key)
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    index = sum((jax.lax.broadcasted_iota(jnp.uint32, shape, i) * jnp.uint32(stride)
                 for i, stride in enumerate(strides)), jnp.zeros(shape, jnp.uint32))
    x0, x1 = _threefry2x32(k1, k2, jnp.zeros(shape, jnp.uint32), index)
    return x0 ^ x1


class Dropout(nn.Module):
    """Inverted dropout with ``nn.Dropout``'s interface and ``dropout`` rng stream, its masks from :func:`random_bits`.

    ``nn.Dropout`` draws a float32 uniform per element with ``jax.random.bernoulli``, through JAX's
    threefry, which CPU runs as a loop over its rounds; those masks took from a sixth to over a third of
    ReLoCLNet's, CMIN's and CI-MHA's training steps on this CPU. Here each element gets one 32-bit word u of
    :func:`random_bits` (the same words as ``jax.random.bits``, from one fused kernel) and is kept where
    u < k = round((1 - rate) * 2^32); kept values are scaled by 2^32 / k, so that E[output] = input
    exactly and the keep probability is 1 - rate to within 2^-33.

    Attributes:
      rate: probability of dropping an element.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        """Args: x [...]; deterministic: True returns x unchanged. Returns an array like x."""
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"dropout rate must be in [0, 1], got {self.rate}")
        keep = round((1.0 - self.rate) * 2**32)
        if deterministic or keep >= 2**32:
            return x
        if keep == 0:
            return jnp.zeros_like(x)
        draws = random_bits(self.make_rng("dropout"), x.shape)
        return jnp.where(draws < jnp.uint32(keep), x * (2**32 / keep), jnp.zeros_like(x))


class MultiHeadAttention(nn.Module):
    """Masked multi-head scaled dot-product attention.

    Projections are ``nn.Dense(num_heads * head_dim)`` followed by a reshape
    (not ``nn.DenseGeneral``; see flax#3676), which keeps kernels 2-D; their
    output axis is the logical ``heads`` axis (sharded over ``model`` by default).

    Attributes:
      num_heads: number of heads H.
      head_dim: per-head size d_k; defaults to ``out_features // num_heads``
        (``out_features`` defaulting to the query feature size).
      out_features: output size of W^O; defaults to the query feature size.
      window: if > 0, query i attends only to keys j with |i - j| <= window
        (local attention); 0 = global.
      dropout_rate: dropout on the attention weights (only when not deterministic).
      use_bias: whether the q/k/v/out projections have a bias.
      kernel_init: initializer of the projection kernels.
    """

    num_heads: int
    head_dim: int | None = None
    out_features: int | None = None
    window: int = 0
    dropout_rate: float = 0.0
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array | None = None,
        *,
        key_mask: Array | None = None,
        query_mask: Array | None = None,
        deterministic: bool = True,
        return_weights: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Attends from ``inputs_q`` to ``inputs_kv``.

        Args:
          inputs_q: [B, Tq, Dq] queries.
          inputs_kv: [B, Tk, Dk] keys/values; defaults to ``inputs_q`` (self-attention).
          key_mask: [B, Tk] key mask (1 = valid); padded keys get zero weight.
          query_mask: [B, Tq] query mask; outputs at padded queries are zeroed.
          deterministic: disables attention dropout when True.
          return_weights: also return the attention weights.

        Returns:
          [B, Tq, out_features] outputs, and optionally [B, H, Tq, Tk] weights
          (zero at padded keys and padded queries). A query row with no valid
          key gets zero weights and outputs only the output-projection bias.
        """
        if inputs_kv is None:
            inputs_kv = inputs_q
        if key_mask is not None:
            inputs_kv = mask_fill(inputs_kv, key_mask)
        if query_mask is not None:
            inputs_q = mask_fill(inputs_q, query_mask)
        out_features = self.out_features or inputs_q.shape[-1]
        head_dim = self.head_dim or out_features // self.num_heads
        if head_dim <= 0:
            raise ValueError(f"head_dim must be positive (out_features={out_features}, heads={self.num_heads})")
        batch, tq, tk = inputs_q.shape[0], inputs_q.shape[1], inputs_kv.shape[1]
        h = self.num_heads

        def project(x, name, length):
            y = dense(h * head_dim, ("embed", "heads"), use_bias=self.use_bias, kernel_init=self.kernel_init,
                      name=name)(x)
            return constrain(y.reshape(batch, length, h, head_dim), ("batch", "length", "heads", None))

        q = project(inputs_q, "query", tq)
        k = project(inputs_kv, "key", tk)
        v = project(inputs_kv, "value", tk)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(head_dim, q.dtype))

        mask = band_mask(tq, tk, self.window)[None, None]  # [1, 1, Tq, Tk]
        if key_mask is not None:
            mask = jnp.logical_and(mask, (key_mask > 0)[:, None, None, :])
        weights = masked_softmax(logits, mask, axis=-1)
        if query_mask is not None:
            weights = weights * (query_mask > 0)[:, None, :, None].astype(weights.dtype)
        if self.dropout_rate > 0.0 and not deterministic:
            weights = Dropout(self.dropout_rate)(weights, deterministic=False)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tq, h * head_dim)
        out = dense(out_features, ("heads", "embed"), use_bias=self.use_bias, kernel_init=self.kernel_init,
                    name="out")(ctx)
        out = constrain(out, ("batch", "length", "embed"))
        if query_mask is not None:
            out = mask_fill(out, query_mask)
        return (out, weights) if return_weights else out


class AdditiveAttention(nn.Module):
    """Additive (tanh) attention: aggregates keys for every query position.

        M_ij = softmax_j( w^T tanh(W_1 q_i + W_2 k_j + b) ),   a_i = sum_j M_ij v_j

    with values ``v`` defaulting to the keys. Memory is O(B * Tq * Tk * features).

    Attributes:
      features: size of the tanh hidden layer (W_1, W_2 output size).
    """

    features: int

    @nn.compact
    def __call__(
        self,
        queries: Array,
        keys: Array,
        key_mask: Array | None = None,
        values: Array | None = None,
        query_mask: Array | None = None,
    ) -> tuple[Array, Array]:
        """Computes the attention and the aggregated values.

        Args:
          queries: [B, Tq, Dq].
          keys: [B, Tk, Dk].
          key_mask: [B, Tk] (1 = valid).
          values: [B, Tk, Dv]; defaults to ``keys``.
          query_mask: [B, Tq]; weights and outputs at padded queries are zeroed.

        Returns:
          (aggregated [B, Tq, Dv], weights M [B, Tq, Tk]).
        """
        if values is None:
            values = keys
        if key_mask is not None:
            keys = mask_fill(keys, key_mask)
            values = mask_fill(values, key_mask)
        if query_mask is not None:
            queries = mask_fill(queries, query_mask)
        wq = dense(self.features, ("embed", "mlp"), use_bias=False, name="query")(queries)  # W_1 q_i
        wk = dense(self.features, ("embed", "mlp"), use_bias=True, name="key")(keys)  # W_2 k_j + b
        hidden = constrain(jnp.tanh(wq[:, :, None, :] + wk[:, None, :, :]), ("batch", None, None, "mlp"))  # [B, Tq, Tk, F]
        logits = dense(1, ("mlp", None), use_bias=False, name="score")(hidden)[..., 0]  # [B, Tq, Tk]
        mask = None if key_mask is None else (key_mask > 0)[:, None, :]
        weights = masked_softmax(logits, mask, axis=-1)
        if query_mask is not None:
            weights = weights * (query_mask > 0)[:, :, None].astype(weights.dtype)
        return jnp.einsum("bqk,bkd->bqd", weights, values), weights


class _GateParams(nn.Module):
    """One gate's parameters under ``nn.Dense``'s names (``kernel`` [in, features], optional ``bias``), returned
    instead of applied, so that a recurrence can use them inside its own scan."""

    features: int
    use_bias: bool
    kernel_init: Initializer

    @nn.compact
    def __call__(self, in_features: int) -> tuple[Array, Array | None]:
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,)) if self.use_bias else None
        return kernel, bias


class _RecurrentCell(nn.Module):
    """The parameters of a GRU or LSTM cell, named as flax's ``nn.GRUCell`` / ``nn.OptimizedLSTMCell``'s.

    GRU: input gates ``ir, iz, in`` (with biases), recurrent ``hr, hz`` (without) and ``hn`` (with).
    LSTM: input gates ``ii, if, ig, io`` (without biases), recurrent ``hi, hf, hg, ho`` (with).
    Returns the input kernels [D, G*H] and bias [G*H] (concatenated over the G gates), and the recurrent
    kernels [H, G*H] and bias [G*H].
    """

    hidden: int
    kind: str  # 'gru' | 'lstm'

    @nn.compact
    def __call__(self, in_features: int) -> tuple[Array, Array, Array, Array]:
        gates = "rzn" if self.kind == "gru" else "ifgo"
        h = self.hidden
        lecun, orthogonal = nn.initializers.lecun_normal(), nn.initializers.orthogonal()
        inputs = [_GateParams(h, self.kind == "gru", lecun, name=f"i{g}")(in_features) for g in gates]
        recurrent = [_GateParams(h, self.kind == "lstm" or g == "n", orthogonal, name=f"h{g}")(h) for g in gates]
        zeros = jnp.zeros((h,), inputs[0][0].dtype)
        return (jnp.concatenate([k for k, _ in inputs], axis=1),
                jnp.concatenate([zeros if b is None else b for _, b in inputs]),
                jnp.concatenate([k for k, _ in recurrent], axis=1),
                jnp.concatenate([zeros if b is None else b for _, b in recurrent]))


def reverse_valid(x: Array, lengths: Array, time_axis: int = 1) -> Array:
    """Reverses each row's valid prefix in time (padded steps stay in place).

    Args: x [B, T, ...] (``time_axis=1``) or [T, B, ...] (``time_axis=0``); lengths [B].
    """
    if time_axis not in (0, 1):
        raise ValueError(f"time_axis must be 0 or 1, got {time_axis}")
    t = jnp.arange(x.shape[time_axis])[None, :]
    index = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # [B, T], an involution
    if time_axis == 0:
        index = index.T
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=time_axis)


class Recurrence(nn.Module):
    """A GRU or LSTM over [B, T, D] whose input projections are one matrix product over all steps.

    The math (and parameter tree ``cell/{ir, iz, in, hr, hz, hn}`` or ``cell/{ii, if, ig, io, hi, hf,
    hg, ho}``) is that of ``nn.RNN(nn.GRUCell)`` / ``nn.RNN(nn.OptimizedLSTMCell)`` with zero initial
    states; but the input half of every gate, x_t W_i + b_i, is computed for all T steps at once
    before the scan (a [B*T, D] x [D, G*H] product instead of T small ones inside the loop), and the
    recurrent half is one [B, H] x [H, G*H] product per step. With ``reverse`` each row runs backwards
    from its last valid step (``lengths``). Computes in the dtype of its kernels (bfloat16 under
    ``compute_dtype=bfloat16``), carrying the state in float32.

    Args of ``__call__``: x [B, T, D] ([T, B, D] with ``time_major``), lengths [B] (None: all T valid).
    Returns [B, T, H] ([T, B, H] with ``time_major``; outputs at steps past a row's length are not
    meaningful).
    """

    hidden: int
    kind: str = "gru"
    reverse: bool = False
    time_major: bool = False

    @nn.compact
    def __call__(self, x: Array, lengths: Array | None = None) -> Array:
        if self.kind not in ("gru", "lstm"):
            raise ValueError(f"Recurrence.kind must be 'gru' or 'lstm', got {self.kind!r}")
        w_in, b_in, w_h, b_h = _RecurrentCell(self.hidden, self.kind, name="cell")(x.shape[-1])
        dtype = w_in.dtype
        if not self.time_major:
            x = jnp.swapaxes(x, 0, 1)  # the scan runs over the leading axis: [T, B, D]
        if lengths is None:
            lengths = jnp.full((x.shape[1],), x.shape[0])
        if self.reverse:
            x = reverse_valid(x, lengths, time_axis=0)
        projected = jnp.einsum("tbd,dg->tbg", x.astype(dtype), w_in) + b_in  # [T, B, G*H], all steps at once
        state_dtype = jnp.promote_types(dtype, jnp.float32)
        zeros = jnp.zeros((x.shape[1], self.hidden), state_dtype)

        # Gates are cut with split (its gradient is one concatenate) rather than slices (a pad and an
        # add per slice in the backward loop).
        def gru_step(state, xp):
            hp = jnp.dot(state.astype(dtype), w_h) + b_h
            (xr, xz, xn), (hr, hz, hn) = jnp.split(xp, 3, axis=-1), jnp.split(hp, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            new = ((1.0 - z) * n + z * state).astype(state_dtype)
            return new, new

        def lstm_step(state, xp):
            c, hidden_state = state
            i, f, g, o = jnp.split(xp + jnp.dot(hidden_state.astype(dtype), w_h) + b_h, 4, axis=-1)
            c = (jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)).astype(state_dtype)
            new = (jax.nn.sigmoid(o) * jnp.tanh(c)).astype(state_dtype)
            return (c, new), new

        if self.kind == "gru":
            _, ys = jax.lax.scan(gru_step, zeros, projected)
        else:
            _, ys = jax.lax.scan(lstm_step, (zeros, zeros), projected)
        if self.reverse:
            ys = reverse_valid(ys, lengths, time_axis=0)
        return ys if self.time_major else jnp.swapaxes(ys, 0, 1)


class _Bidirectional(nn.Module):
    """``forward_rnn`` and ``backward_rnn`` :class:`Recurrence` s, outputs concatenated (``nn.Bidirectional``'s tree).

    Args of ``__call__``: x [B, T, D], lengths [B]. Returns [B, T, 2H]; both directions run time-major,
    so x and the output are transposed once each.
    """

    hidden: int
    kind: str

    @nn.compact
    def __call__(self, x: Array, lengths: Array) -> Array:
        x = jnp.swapaxes(x, 0, 1)
        forward = Recurrence(self.hidden, self.kind, time_major=True, name="forward_rnn")(x, lengths)
        backward = Recurrence(self.hidden, self.kind, reverse=True, time_major=True, name="backward_rnn")(x, lengths)
        return jnp.swapaxes(jnp.concatenate([forward, backward], axis=-1), 0, 1)


class BiGRU(nn.Module):
    """Bidirectional GRU over a padded batch.

    The math and parameter tree of ``nn.Bidirectional(nn.RNN(nn.GRUCell), nn.RNN(nn.GRUCell))`` with
    ``seq_lengths`` taken from the mask (``bidirectional/{forward,backward}_rnn/cell/{ir,iz,in,hr,hz,hn}``),
    so the backward GRU starts at the last valid step of each sequence; forward and backward states are
    concatenated. Runs as :class:`Recurrence`: the input projections of all steps are one product.

    Attributes:
      hidden: hidden size per direction (output has ``2 * hidden`` features).
    """

    hidden: int

    @nn.compact
    def __call__(self, inputs: Array, mask: Array) -> Array:
        """Runs both directions.

        Args:
          inputs: [B, T, D].
          mask: [B, T] prefix mask (1 = valid).

        Returns:
          [B, T, 2 * hidden]; zeros at padded steps.
        """
        inputs = mask_fill(inputs, mask)
        rnn = _Bidirectional(self.hidden, "gru", name="bidirectional")
        return mask_fill(rnn(inputs, sequence_lengths(mask)), mask)


def masked_log_softmax(logits: Array, mask: Array | None, axis: int = -1) -> Array:
    """Log-softmax over ``axis`` restricted to positions where ``mask`` is non-zero.

    Args:
      logits: array of logits.
      mask: array broadcastable to ``logits`` (1 = keep), or None.
      axis: axis to normalise over.

    Returns:
      Log-probabilities with the shape of ``logits``: ``-inf`` at masked
      positions (so rows with no valid position are all ``-inf``); gradients
      are finite everywhere. Pick entries with ``take_along_axis`` rather than
      by multiplying with a one-hot (``0 * -inf`` is NaN).
    """
    if mask is None:
        return jax.nn.log_softmax(logits, axis=axis)
    keep = jnp.broadcast_to(mask > 0, logits.shape)
    shifted = jnp.where(keep, logits, jnp.finfo(logits.dtype).min)
    shifted = shifted - jax.lax.stop_gradient(jnp.max(shifted, axis=axis, keepdims=True))
    total = jnp.sum(jnp.where(keep, jnp.exp(shifted), 0.0), axis=axis, keepdims=True)
    log_total = jnp.log(jnp.where(total > 0, total, 1.0))
    return jnp.where(keep, shifted - log_total, -jnp.inf)


class BiLSTM(nn.Module):
    """Bidirectional LSTM over a padded batch (the LSTM counterpart of :class:`BiGRU`).

    The math and parameter tree of ``nn.Bidirectional`` of two ``nn.RNN(nn.OptimizedLSTMCell)`` with
    ``seq_lengths`` from the mask (run as :class:`Recurrence`): the backward LSTM starts at the last valid
    step. Initial states are zero. Cell parameters are named as ``nn.LSTMCell``'s
    (``ii, if, ig, io`` input kernels, ``hi, hf, hg, ho`` recurrent kernels with
    the biases):

        i = sigma(x W_ii + h W_hi + b_hi)    f = sigma(x W_if + h W_hf + b_hf)
        g = tanh(x W_ig + h W_hg + b_hg)     o = sigma(x W_io + h W_ho + b_ho)
        c' = f * c + i * g                   h' = o * tanh(c')

    Attributes:
      hidden: hidden size per direction (output has ``2 * hidden`` features).
    """

    hidden: int

    @nn.compact
    def __call__(self, inputs: Array, mask: Array) -> Array:
        """Args: inputs [B, T, D]; mask [B, T] prefix mask. Returns [B, T, 2 * hidden], zeros at padded steps."""
        rnn = _Bidirectional(self.hidden, "lstm", name="bidirectional")
        return mask_fill(rnn(mask_fill(inputs, mask), sequence_lengths(mask)), mask)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a trainable embedding of each absolute position (BERT-style) to a sequence.

        out_t = x_t + P[t],   P in R^{max_len x D}

    Positions are absolute from the first step, so appending padding never
    changes the valid (prefix) outputs; padded positions are not zeroed here.

    Attributes:
      max_len: rows of the table P; 0 = the sequence length seen at init.
      init_scale: std of P's normal initialisation (BERT: 0.02).
    """

    max_len: int = 0
    init_scale: float = 0.02

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Args: x [B, T, D]. Returns x + P[:T] ([B, T, D])."""
        t = x.shape[-2]
        rows = self.max_len or t
        if t > rows:
            raise ValueError(f"sequence length {t} exceeds the positional table's {rows} rows (max_len)")
        table = self.param("embedding", nn.initializers.normal(self.init_scale), (rows, x.shape[-1]))
        return x + table[:t].astype(x.dtype)


class FeedForward(nn.Module):
    """Position-wise feed-forward block (Vaswani et al. 2017):

        FFN(x) = W_2 act(W_1 x + b_1) + b_2     (hidden > 0)
        FFN(x) = W x + b                        (hidden == 0: a single layer)

    Position-wise, so padded positions never affect valid ones (they are not
    zeroed here).

    Attributes:
      features: output size.
      hidden: size of the inner layer; 0 = one linear layer.
      activation: inner non-linearity.
      dropout_rate: dropout on the inner activations (only when not deterministic).
    """

    features: int
    hidden: int = 0
    activation: Callable[[Array], Array] = nn.relu
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        """Args: x [..., D]. Returns [..., features]."""
        if self.hidden > 0:
            x = self.activation(dense(self.hidden, ("embed", "mlp"), name="inner")(x))
            x = Dropout(self.dropout_rate)(x, deterministic=deterministic)
            return dense(self.features, ("mlp", "embed"), name="outer")(x)
        return dense(self.features, ("embed", None), name="outer")(x)


class WordEmbedding(nn.Module):
    """Word-table lookup for padded queries, with optional freezing and dropout.

    The table is the parameter ``embedding`` [vocab_size, features] (as
    ``nn.Embed``'s, so a module named ``word_embed`` keeps
    ``params['word_embed']['embedding']``, where pretrained vectors are loaded).
    Padded words read row 0 and come out as zeros, whatever their token id.

    Attributes:
      vocab_size: rows of the table.
      features: embedding size.
      embedding_init: initializer of the table (``nn.Embed``'s default).
      freeze: stop gradients into the table (fixed pretrained vectors).
      dropout_rate: dropout on the embedded words (only when not deterministic).
    """

    vocab_size: int
    features: int
    embedding_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    freeze: bool = False
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, tokens: Array, mask: Array, *, deterministic: bool = True) -> Array:
        """Args: tokens [B, L] int ids; mask [B, L]. Returns [B, L, features], zeros at padded words."""
        table = self.param("embedding", partitioned(self.embedding_init, ("vocab", "embed")),
                           (self.vocab_size, self.features))
        if self.freeze:
            table = jax.lax.stop_gradient(table)
        words = mask_fill(jnp.take(table, jnp.where(mask > 0, tokens, 0), axis=0), mask)
        return Dropout(self.dropout_rate)(words, deterministic=deterministic)
