r"""VCMR latency of the corpus search, exact or approximate (random weights and vectors of the right shapes).

    python -m benchmarks.vcmr_latency --num_videos=2179 \
        --clips_from=tests/fixtures/tvr/tvr_video2dur_idx.json --dim=384 --num_queries=1000 [--mode=ann]
    python -m benchmarks.vcmr_latency --num_videos=20000 --num_clips=100 --dim=384 --num_queries=1000 [--mode=ann]

The timed path is the whole VCMR pipeline per batch of queries: query encoding
(ReLoCLNet's query encoder: 30 tokens, d = --dim, 8 heads, two streams), scoring
against every clip of the corpus (``exact``) or the faiss candidates re-scored
exactly (``ann``, ``jvmr.retrieval.AnnSettings``), the top 100 videos, span
localisation inside them and the top 200 moments (``jvmr.retrieval.CorpusSearcher``);
the best of ``--repeats`` passes. ``--clips_from`` takes the first N videos of the
file's ``val`` entries, one clip per 1.5 s (at most 128). Prints one JSON line:
num_videos, num_clips_total, num_queries, ms_per_query, flops_per_query (exact corpus
scoring: 2 * clips * streams * d), gemm_gflops (this machine's float32 matrix-product
rate: the best of numpy's BLAS and XLA on [n, d] x [d, batch] products, n up to 16384,
measured in the same run), gemm_ms_per_query (the scoring FLOPs at that rate), ratio_to_gemm,
mode and index_build_s (laying out the corpus, and training / filling the ANN index).
Random vectors are the ANN's worst case (no structure to exploit); its recall cost is
measured on a trained model (README).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jvmr import retrieval
from jvmr.models import reloclnet

STREAMS = 2
CLIP_SECONDS = 1.5
MAX_CLIPS = 128


def clip_counts(args) -> np.ndarray:
    if args.clips_from:
        with open(args.clips_from) as f:
            val = json.load(f)["val"]
        durations = [float(v[0]) for v in list(val.values())[:args.num_videos]]
        if len(durations) < args.num_videos:
            raise SystemExit(f"{args.clips_from} has {len(durations)} val videos, fewer than {args.num_videos}")
        return np.asarray([min(MAX_CLIPS, max(1, math.ceil(d / CLIP_SECONDS))) for d in durations])
    return np.full(args.num_videos, args.num_clips)


def random_index(counts: np.ndarray, dim: int, seed: int = 0) -> retrieval.CorpusIndex:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    context = rng.standard_normal((STREAMS, int(offsets[-1]), dim), dtype=np.float32)
    return retrieval.CorpusIndex(vids=[str(i) for i in range(len(counts))], durations=counts * CLIP_SECONDS,
                                 offsets=offsets, norms=retrieval.clip_norms(context), context=context, info={})


def gemm_rate(q: int, k: int, clips: int, repeats: int = 5) -> float:
    """This machine's float32 GFLOP/s for [n, k] x [k, q] products: the best over numpy's BLAS and
    XLA (jitted) and n in 1024, 4096, 16384 (at most ``clips``), best of ``repeats`` each."""
    xla = jax.jit(jnp.matmul)
    rate = 0.0
    for n in sorted({min(clips, c) for c in (1024, 4096, 16384)}):
        a = np.random.default_rng(1).standard_normal((n, k), dtype=np.float32)
        b = np.random.default_rng(2).standard_normal((k, q), dtype=np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        for run in (lambda: a @ b, lambda: xla(ja, jb).block_until_ready()):
            run()
            for _ in range(repeats):
                t = time.perf_counter()
                run()
                rate = max(rate, 2.0 * q * k * n / (time.perf_counter() - t) / 1e9)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_videos", type=int, required=True)
    parser.add_argument("--clips_from", default="")
    parser.add_argument("--num_clips", type=int, default=0)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--num_queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000, help="queries per search call")
    parser.add_argument("--mode", default="exact", choices=["exact", "ann"])
    parser.add_argument("--nprobe", type=int, default=retrieval.AnnSettings.nprobe)
    parser.add_argument("--clips_per_stream", type=int, default=retrieval.AnnSettings.clips_per_stream)
    parser.add_argument("--rescore", type=int, default=retrieval.AnnSettings.rescore)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the queries (best kept)")
    args = parser.parse_args()
    if not args.clips_from and args.num_clips < 1:
        parser.error("give --clips_from or --num_clips")

    counts = clip_counts(args)
    index = random_index(counts, args.dim)
    num_clips = index.num_clips
    rng = np.random.default_rng(3)
    ann = None
    if args.mode == "ann":
        ann = retrieval.AnnSettings(nprobe=args.nprobe, clips_per_stream=args.clips_per_stream, rescore=args.rescore)
    start = time.perf_counter()
    searcher = retrieval.CorpusSearcher(index, rng.standard_normal(5).astype(np.float32),
                                        rng.standard_normal(5).astype(np.float32),
                                        retrieval.SearchSettings(min_len=2, max_len=16))
    del index  # the searcher keeps its own layout
    if ann is not None:
        searcher.build_ann(ann)
    build_s = time.perf_counter() - start
    model = reloclnet.ReLoCLNet(vocab_size=1000, word_dim=300, hidden_size=args.dim, num_heads=8,
                                use_subtitles=True)
    tokens = rng.integers(2, 1000, size=(args.batch, 30)).astype(np.int32)
    mask = np.ones((args.batch, 30), np.float32)
    query_batch = {"query_tokens": tokens, "query_mask": mask}
    params = jax.jit(lambda r: nn.meta.unbox(model.init(r, query_batch, method=model.encode_query)))(jax.random.key(0))
    encode = jax.jit(lambda b: model.apply(params, b, method=model.encode_query))

    def run_batch() -> float:
        """Runs one batch; returns the seconds spent encoding the queries."""
        start = time.perf_counter()
        enc = jax.device_get(encode(query_batch))
        encoded = time.perf_counter() - start
        searcher.search(np.asarray(enc["query"]), np.asarray(enc["local_query"]))
        return encoded

    run_batch()  # compile
    batches = max(1, args.num_queries // args.batch)
    seconds, encoding = math.inf, math.inf
    for _ in range(args.repeats):
        start = time.perf_counter()
        encoded = sum(run_batch() for _ in range(batches))
        if time.perf_counter() - start < seconds:
            seconds, encoding = time.perf_counter() - start, encoded
    num_queries = batches * args.batch
    flops = 2.0 * num_clips * STREAMS * args.dim
    rate = gemm_rate(args.batch, args.dim, num_clips)
    print(json.dumps({"num_videos": int(len(counts)), "num_clips_total": num_clips,
                      "num_queries": num_queries, "ms_per_query": round(1e3 * seconds / num_queries, 4),
                      "encode_ms_per_query": round(1e3 * encoding / num_queries, 4),
                      "flops_per_query": flops, "gemm_gflops": round(rate, 2),
                      "gemm_ms_per_query": round(1e3 * flops / (rate * 1e9), 4),
                      "ratio_to_gemm": round(seconds / num_queries / (flops / (rate * 1e9)), 3),
                      "mode": args.mode, "index_build_s": round(build_s, 1)}))


if __name__ == "__main__":
    main()
