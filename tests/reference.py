"""Small numpy helpers shared by the model tests' reference implementations."""

import jax
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
