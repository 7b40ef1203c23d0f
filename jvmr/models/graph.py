"""Syntactic graph convolution over dependency parses (the only jraph user).

CMIN's syntactic GCN (Zhang et al., SIGIR 2019, Sec. 3.1; following
Marcheggiani & Titov, EMNLP 2017). For word i with neighbours N(i) in the
dependency graph (both arc directions plus a self loop):

    g_i = ReLU( sum_{j in N(i)} gate_ij * (W_{dir(i,j)} h_j + b_{lab(i,j)}) )

with three direction-specific matrices W (dependent -> head, head -> dependent,
self loop; no bias) and a bias vector per (direction, label). Layers are
stacked with residuals (the seed's equations):

    g^1 = synGCN(h^q),      o^1 = g^1 + h^q
    g^l = synGCN(o^{l-1}),  o^l = g^l + o^{l-1}

The seed's equation has no gate (``use_gates=False`` gives exactly it); the
gates follow Marcheggiani & Titov, whose gated GCN CMIN's syntactic GCN and
its released code (ikuinen/CMIN_moment_retrieval, graph_convolution.py) use:

* ``gate_input='input'`` (default, M&T): a scalar gate per edge from the
  sender, gate_ij = sigmoid( h_j . w_{dir} + b^g_{dir, lab} ), with a gate
  vector w per direction and a scalar gate bias per (direction, label);
* ``gate_input='transformed'`` (released code): a vector gate from the
  transformed message x'_j = W_dir h_j, gate_ij = sigmoid( W^g_dir x'_j +
  b^g_{dir, lab} ) (elementwise, W^g_dir a [F, F] matrix without bias, b^g a
  vector per (direction, label)), so g_i = ReLU( sum_j (x'_j + b_{dir, lab})
  * gate_ij ).

As released, dropout is applied to g before the residual (x = x + dropout(out)).

The padded per-example edge lists of a batch are packed into one
``jraph.GraphsTuple`` (node ids offset by b * L); messages are summed with
``jraph.segment_sum``. Padded edges contribute nothing (their messages are
multiplied by the edge mask, and their ids are sanitised first, so garbage
senders/labels are harmless) and padded nodes output zeros. jraph's
``zero_out_padding`` is not used (broken on current JAX).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from jvmr.models.layers import Dropout

Array = jax.Array

NUM_DIRECTIONS = 3  # 0: dependent -> head, 1: head -> dependent, 2: self loop.
GATE_INPUTS = ("input", "transformed")


def batch_dependency_graphs(
    nodes: Array,
    node_mask: Array,
    senders: Array,
    receivers: Array,
    labels: Array,
    directions: Array,
    edge_mask: Array,
    num_labels: int,
) -> jraph.GraphsTuple:
    """Packs padded per-example dependency graphs into one batched GraphsTuple.

    Args:
      nodes: [B, L, D] node features.
      node_mask: [B, L] (1 = valid word).
      senders: [B, E] int, local node index (0..L-1) of each edge's source.
      receivers: [B, E] int, local index of each edge's target.
      labels: [B, E] int dependency-label ids.
      directions: [B, E] int in {0, 1, 2} (see ``NUM_DIRECTIONS``).
      edge_mask: [B, E] (1 = real edge).
      num_labels: size of the label table; out-of-range labels are clipped.

    Returns:
      A GraphsTuple with B graphs of L nodes and E edges each:
      ``nodes = {'h': [B*L, D], 'mask': [B*L]}``,
      ``edges = {'label', 'direction', 'mask'}`` (each [B*E]),
      global ``senders``/``receivers`` [B*E] (padded edges point at node 0 of
      their graph and have mask 0).
    """
    b, l = node_mask.shape
    e = edge_mask.shape[1]
    valid = edge_mask > 0
    offset = (jnp.arange(b, dtype=jnp.int32) * l)[:, None]

    def node_ids(idx):
        idx = jnp.clip(idx.astype(jnp.int32), 0, l - 1)
        return (jnp.where(valid, idx, 0) + offset).reshape(-1)

    labels = jnp.where(valid, jnp.clip(labels.astype(jnp.int32), 0, num_labels - 1), 0)
    directions = jnp.where(valid, jnp.clip(directions.astype(jnp.int32), 0, NUM_DIRECTIONS - 1), 0)
    h = jnp.where((node_mask > 0)[..., None], nodes, 0.0)
    return jraph.GraphsTuple(
        nodes={"h": h.reshape(b * l, -1), "mask": node_mask.reshape(-1).astype(nodes.dtype)},
        edges={
            "label": labels.reshape(-1),
            "direction": directions.reshape(-1),
            "mask": edge_mask.reshape(-1).astype(nodes.dtype),
        },
        senders=node_ids(senders),
        receivers=node_ids(receivers),
        n_node=jnp.full((b,), l, jnp.int32),
        n_edge=jnp.full((b,), e, jnp.int32),
        globals=None,
    )


class SyntacticGCN(nn.Module):
    """One direction- and label-aware (gated) syntactic GCN layer.

    Attributes:
      features: output size of the layer.
      num_labels: number of dependency labels (per-direction label tables have
        this many rows).
      use_gates: edge-wise gates (Marcheggiani & Titov 2017).
      gate_input: 'input' (paper / M&T: scalar gate from h_j; ``gate_kernel``
        [3, D], ``gate_bias`` [3 * num_labels]) or 'transformed' (released
        code: vector gate from W_dir h_j; ``gate_kernel`` [3, F, F],
        ``gate_bias`` [3 * num_labels, F]).
    """

    features: int
    num_labels: int
    use_gates: bool = True
    gate_input: str = "input"

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> Array:
        """Applies the layer.

        Args:
          graph: a GraphsTuple from :func:`batch_dependency_graphs` with
            ``nodes['h']`` [N, D].

        Returns:
          g: [N, features] = ReLU(aggregated messages), zero at padded nodes.
        """
        if self.gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {self.gate_input!r}")
        h = graph.nodes["h"]
        num_nodes, d_in = h.shape
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)),
            (NUM_DIRECTIONS, d_in, self.features),
        )  # W_dir
        label_bias = self.param(
            "label_bias", nn.initializers.zeros_init(), (NUM_DIRECTIONS * self.num_labels, self.features)
        )  # b_{dir, lab}
        direction = graph.edges["direction"]
        label_index = direction * self.num_labels + graph.edges["label"]

        transformed = jnp.einsum("nd,kdf->nkf", h, kernel)  # [N, 3, F]: W_k h_n for every direction k
        messages = transformed[graph.senders, direction] + label_bias[label_index]  # [E, F]

        if self.use_gates:
            if self.gate_input == "input":  # scalar gate: sigmoid(h_j . w_dir + b^g_{dir, lab})
                gate_kernel = self.param(
                    "gate_kernel", nn.initializers.lecun_normal(in_axis=-1, out_axis=-2), (NUM_DIRECTIONS, d_in)
                )
                gate_bias = self.param(
                    "gate_bias", nn.initializers.zeros_init(), (NUM_DIRECTIONS * self.num_labels,)
                )
                node_gates = jnp.einsum("nd,kd->nk", h, gate_kernel)  # [N, 3]
                gate_logits = (node_gates[graph.senders, direction] + gate_bias[label_index])[:, None]
            else:  # vector gate: sigmoid(W^g_dir (W_dir h_j) + b^g_{dir, lab})
                gate_kernel = self.param(
                    "gate_kernel",
                    nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)),
                    (NUM_DIRECTIONS, self.features, self.features),
                )
                gate_bias = self.param(
                    "gate_bias", nn.initializers.zeros_init(), (NUM_DIRECTIONS * self.num_labels, self.features)
                )
                node_gates = jnp.einsum("nkf,kfg->nkg", transformed, gate_kernel)  # [N, 3, F]: W^g_k W_k h_n
                gate_logits = node_gates[graph.senders, direction] + gate_bias[label_index]
            messages = messages * jax.nn.sigmoid(gate_logits)

        messages = messages * graph.edges["mask"][:, None]
        aggregated = jraph.segment_sum(messages, graph.receivers, num_segments=num_nodes)
        return jax.nn.relu(aggregated) * graph.nodes["mask"][:, None]


class SyntacticGCNStack(nn.Module):
    """Residual stack of syntactic GCN layers: o^l = o^{l-1} + dropout(g^l), o^0 = h.

    Attributes:
      num_layers: number of layers (0 = identity up to padding).
      num_labels: dependency-label table size.
      use_gates: see :class:`SyntacticGCN`.
      gate_input: see :class:`SyntacticGCN`.
      dropout_rate: dropout on each layer output g before the residual.
    """

    num_layers: int
    num_labels: int
    use_gates: bool = True
    gate_input: str = "input"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(
        self,
        nodes: Array,
        node_mask: Array,
        senders: Array,
        receivers: Array,
        labels: Array,
        directions: Array,
        edge_mask: Array,
        *,
        deterministic: bool = True,
    ) -> Array:
        """Runs the stack on a padded batch.

        Args:
          nodes: [B, L, D] word features h.
          node_mask: [B, L].
          senders, receivers, labels, directions: [B, E] int (local node ids).
          edge_mask: [B, E].
          deterministic: disables dropout when True.

        Returns:
          o^{num_layers}: [B, L, D], zero at padded words.
        """
        b, l, d = nodes.shape
        graph = batch_dependency_graphs(
            nodes, node_mask, senders, receivers, labels, directions, edge_mask, self.num_labels
        )
        out = graph.nodes["h"]
        for i in range(self.num_layers):
            g = SyntacticGCN(
                features=d,
                num_labels=self.num_labels,
                use_gates=self.use_gates,
                gate_input=self.gate_input,
                name=f"layer_{i}",
            )(graph._replace(nodes={**graph.nodes, "h": out}))
            g = Dropout(self.dropout_rate)(g, deterministic=deterministic)
            out = (out + g) * graph.nodes["mask"][:, None]
        return out.reshape(b, l, d)
