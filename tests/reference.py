"""Small numpy helpers shared by the model tests' reference implementations."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# CPU compile time dominates tiny tests; XLA's backend optimisations buy nothing there.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def prefix_mask(lengths, t):
    """[len(lengths), t] float32 mask with ``lengths[i]`` leading ones per row."""
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- numpy layer references


def mha_reference(p, xq, xkv, key_mask, query_mask, num_heads, window):
    def dense(x, name):
        return x @ p[name]["kernel"] + p[name]["bias"]

    b, tq, _ = xq.shape
    tk = xkv.shape[1]
    q, k, v = dense(xq, "query"), dense(xkv, "key"), dense(xkv, "value")
    dh = q.shape[-1] // num_heads
    q = q.reshape(b, tq, num_heads, dh)
    k = k.reshape(b, tk, num_heads, dh)
    v = v.reshape(b, tk, num_heads, dh)
    out = np.zeros((b, tq, num_heads * dh), np.float64)
    weights = np.zeros((b, num_heads, tq, tk))
    for bi in range(b):
        for h in range(num_heads):
            for i in range(tq):
                allowed = [j for j in range(tk) if key_mask[bi, j] > 0 and (window <= 0 or abs(i - j) <= window)]
                if not allowed:
                    continue
                s = np.array([q[bi, i, h] @ k[bi, j, h] / np.sqrt(dh) for j in allowed])
                w = np.exp(s - s.max())
                w /= w.sum()
                weights[bi, h, i, allowed] = w
                out[bi, i, h * dh:(h + 1) * dh] = w @ v[bi, allowed, h]
    out = dense(out, "out")
    return out * query_mask[..., None], weights


def _lstm_step(p, c, h, x):
    def gate(name):
        return x @ p[f"i{name}"]["kernel"] + h @ p[f"h{name}"]["kernel"] + p[f"h{name}"]["bias"]

    i, f, g, o = sigmoid(gate("i")), sigmoid(gate("f")), np.tanh(gate("g")), sigmoid(gate("o"))
    c = f * c + i * g
    return c, o * np.tanh(c)


def bilstm_reference(p, x, lengths):
    """Numpy BiLSTM over [B, T, D] with per-row lengths; zeros at padded steps."""
    b, t, _ = x.shape
    hidden = p["forward_rnn"]["cell"]["hi"]["kernel"].shape[0]
    out = np.zeros((b, t, 2 * hidden))
    for bi, n in enumerate(lengths):
        for direction, steps, cols in (("forward_rnn", range(n), slice(0, hidden)),
                                       ("backward_rnn", reversed(range(n)), slice(hidden, None))):
            c = h = np.zeros(hidden)
            for i in steps:
                c, h = _lstm_step(p[direction]["cell"], c, h, x[bi, i])
                out[bi, i, cols] = h
    return out


# ----------------------------------------------------------------------------- tiny model batches

# A batch of B examples in the pipeline's layout (see jvmr/data/pipeline.py): T clips of DV-d
# features, L words, E edges; the valid prefixes are T_VALID clips and L_VALID words.
NUM_LABELS = 11
VOCAB = 40
B, T, L, E, DV = 2, 12, 6, 18, 10
T_VALID = (12, 8)
L_VALID = (6, 4)


def _dependency_edges(rng, num_words, budget):
    """Edges of a random tree as the pipeline emits them: both arc directions + self loops, then padding."""
    edges = []  # (sender, receiver, label, direction)
    for i in range(1, num_words):
        head, label = int(rng.integers(0, i)), int(rng.integers(2, NUM_LABELS))
        edges += [(i, head, label, 0), (head, i, label, 1)]  # dependent -> head, head -> dependent
    edges += [(i, i, 1, 2) for i in range(num_words)]  # self loops
    assert len(edges) <= budget
    arr = np.zeros((budget, 4), np.int32)
    arr[:len(edges)] = edges
    mask = (np.arange(budget) < len(edges)).astype(np.float32)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], mask


def make_batch(seed=0, t=T, l=L, e=E, garbage=False):
    """A tiny batch; with ``garbage`` every padded slot holds junk that masks must hide."""
    rng = np.random.default_rng(seed)
    vmask, qmask = prefix_mask(T_VALID, t), prefix_mask(L_VALID, l)
    feats = rng.normal(size=(B, t, DV)).astype(np.float32)
    tokens = rng.integers(2, VOCAB, size=(B, l)).astype(np.int32)
    edges = [_dependency_edges(np.random.default_rng(100 + b), L_VALID[b], e) for b in range(B)]
    batch = dict(
        video_feats=feats, video_mask=vmask, query_tokens=tokens * qmask.astype(np.int32), query_mask=qmask,
        edge_senders=np.stack([x[0] for x in edges]).astype(np.int32),
        edge_receivers=np.stack([x[1] for x in edges]).astype(np.int32),
        edge_labels=np.stack([x[2] for x in edges]).astype(np.int32),
        edge_directions=np.stack([x[3] for x in edges]).astype(np.int32),
        edge_mask=np.stack([x[4] for x in edges]),
        gt_span=np.array([[0.25, 0.6], [0.1, 0.45]], np.float32),
    )
    if garbage:
        g = np.random.default_rng(seed + 999)
        batch["video_feats"] = np.where(vmask[..., None] > 0, feats, g.normal(size=feats.shape) * 1e3).astype(np.float32)
        batch["query_tokens"] = np.where(qmask > 0, batch["query_tokens"], g.integers(0, 3 * VOCAB, size=(B, l))).astype(np.int32)
        emask = batch["edge_mask"] > 0
        for key, hi in (("edge_senders", 3 * l), ("edge_receivers", 3 * l), ("edge_labels", 500), ("edge_directions", 7)):
            batch[key] = np.where(emask, batch[key], g.integers(-2, hi, size=(B, e))).astype(np.int32)
    return batch


def pad_batch(batch, extra_t=5, extra_l=3, extra_e=4, seed=7):
    """Pads every axis with garbage (masks 0)."""
    g = np.random.default_rng(seed)
    out = dict(batch)
    out["video_feats"] = np.concatenate([batch["video_feats"], g.normal(size=(B, extra_t, DV)).astype(np.float32) * 1e3], 1)
    out["video_mask"] = np.concatenate([batch["video_mask"], np.zeros((B, extra_t), np.float32)], 1)
    out["query_tokens"] = np.concatenate([batch["query_tokens"], g.integers(0, 3 * VOCAB, (B, extra_l)).astype(np.int32)], 1)
    out["query_mask"] = np.concatenate([batch["query_mask"], np.zeros((B, extra_l), np.float32)], 1)
    for key, hi in (("edge_senders", 30), ("edge_receivers", 30), ("edge_labels", 500), ("edge_directions", 7)):
        out[key] = np.concatenate([batch[key], g.integers(-3, hi, (B, extra_e)).astype(np.int32)], 1)
    out["edge_mask"] = np.concatenate([batch["edge_mask"], np.zeros((B, extra_e), np.float32)], 1)
    return out


def random_params_module(module, *args, seed=0, scale=0.3, **kwargs):
    """Random-normal params (biases included) with the init's shapes, without compiling the init."""
    shapes = nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs)))
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(rng.normal(size=x.shape) * scale, x.dtype) for x in leaves])


def random_params(model, batch, seed=0, scale=0.3):
    return random_params_module(model, batch, seed=seed, scale=scale, train=False)


@functools.lru_cache(maxsize=None)
def _jitted_apply(model):
    return jax.jit(lambda p, b: model.apply(p, b, train=False), compiler_options=FAST_COMPILE)


def run(model, params, batch):
    return to_numpy(_jitted_apply(model)(params, batch))


def simulated_devices_xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with ``devices`` simulated CPU devices: unoptimised code (these programs
    are tiny and compiling dominates, 2x faster here) and collectives that wait up to 10 minutes for their
    participants. XLA's CPU default gives up after 40 s, and 8 device threads sharing 2 cores with another
    test's processes were seen to miss that (a rendezvous termination, not a wrong result)."""
    return (f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
            "--xla_cpu_collective_call_terminate_timeout_seconds=600 --xla_cpu_collective_timeout_seconds=600")
