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

* :class:`BiGRU` -- bidirectional GRU over a padded batch; the backward
  direction starts at the last valid step of each sequence.

Padding never changes valid outputs: padded inputs are replaced by zeros before
use (so garbage, even inf/NaN, in padded slots is harmless), padded keys get no
attention weight, and outputs at padded positions are zeroed.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Any]


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


class MultiHeadAttention(nn.Module):
    """Masked multi-head scaled dot-product attention.

    Projections are ``nn.Dense(num_heads * head_dim)`` followed by a reshape
    (not ``nn.DenseGeneral``; see flax#3676), which keeps kernels 2-D so that
    sharding annotations can be attached later.

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
            y = nn.Dense(h * head_dim, use_bias=self.use_bias, kernel_init=self.kernel_init, name=name)(x)
            return y.reshape(batch, length, h, head_dim)

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
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tq, h * head_dim)
        out = nn.Dense(out_features, use_bias=self.use_bias, kernel_init=self.kernel_init, name="out")(ctx)
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
        wq = nn.Dense(self.features, use_bias=False, name="query")(queries)  # W_1 q_i
        wk = nn.Dense(self.features, use_bias=True, name="key")(keys)  # W_2 k_j + b
        hidden = jnp.tanh(wq[:, :, None, :] + wk[:, None, :, :])  # [B, Tq, Tk, F]
        logits = nn.Dense(1, use_bias=False, name="score")(hidden)[..., 0]  # [B, Tq, Tk]
        mask = None if key_mask is None else (key_mask > 0)[:, None, :]
        weights = masked_softmax(logits, mask, axis=-1)
        if query_mask is not None:
            weights = weights * (query_mask > 0)[:, :, None].astype(weights.dtype)
        return jnp.einsum("bqk,bkd->bqd", weights, values), weights


class BiGRU(nn.Module):
    """Bidirectional GRU over a padded batch.

    Uses ``nn.Bidirectional(nn.RNN(nn.GRUCell), nn.RNN(nn.GRUCell))`` with
    ``seq_lengths`` taken from the mask, so the backward GRU starts at the last
    valid step of each sequence. Forward and backward states are concatenated.

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
        lengths = sequence_lengths(mask)
        # parent=None: the cells/RNNs are adopted by their wrappers, giving the
        # param tree bidirectional/{forward,backward}_rnn/cell/{ir,iz,in,hr,hz,hn}.
        rnn = nn.Bidirectional(
            nn.RNN(nn.GRUCell(self.hidden, parent=None), parent=None),
            nn.RNN(nn.GRUCell(self.hidden, parent=None), parent=None),
            name="bidirectional",
        )
        return mask_fill(rnn(inputs, seq_lengths=lengths), mask)
