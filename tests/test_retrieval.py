"""Corpus search (jvmr.retrieval) against brute-force numpy references; index files; the corpus
evaluator agrees with the per-query decoder on the query's own video."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jvmr import registry, retrieval
from jvmr.models import reloclnet as rl

M, D = 2, 8


def log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def make_index(seed=0, lengths=(5, 9, 3, 7, 6)):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    context = rng.normal(size=(M, offsets[-1], D)).astype(np.float32)
    return retrieval.CorpusIndex(vids=[f"v{i}" for i in range(len(lengths))],
                                 durations=rng.uniform(10, 60, len(lengths)).astype(np.float32),
                                 offsets=offsets, norms=retrieval.clip_norms(context), context=context,
                                 info={"model": "test"})


def reference_search(index, q, lq, k_start, k_end, settings):
    """Every (video, i, j) of every video scored from the definitions, then sorted."""
    out = []
    for qi in range(q.shape[0]):
        phi = []
        for v in range(index.num_videos):
            a, b = index.offsets[v], index.offsets[v + 1]
            per_stream = [max(q[qi, m] @ index.context[m, t] / np.linalg.norm(q[qi, m])
                              / np.linalg.norm(index.context[m, t]) for t in range(a, b)) for m in range(M)]
            phi.append(np.mean(per_stream))
        phi = np.asarray(phi)
        top = np.argsort(-phi, kind="stable")[:settings.num_videos]
        moments = []
        for v in top:
            a, b = index.offsets[v], index.offsets[v + 1]
            n = b - a
            s = np.mean([index.context[m, a:b] @ lq[qi, m] for m in range(M)], axis=0)
            ls = log_softmax(np.correlate(np.pad(s, 2), k_start, "valid"))
            le = log_softmax(np.correlate(np.pad(s, 2), k_end, "valid"))
            for i in range(n):
                for j in range(i, n):
                    length = j - i + 1
                    if length < settings.min_len or (settings.max_len and length > settings.max_len):
                        continue
                    d = index.durations[v]
                    moments.append((settings.alpha * phi[v] + ls[i] + le[j], v, i / n * d, (j + 1) / n * d))
        moments.sort(key=lambda m: -m[0])
        out.append((phi, top, moments[:settings.num_moments]))
    return out


MANY = tuple(int(n) for n in np.random.default_rng(7).integers(1, 14, size=23))  # 23 videos of 1-13 clips


@pytest.mark.parametrize("settings,lengths,layout", [
    (retrieval.SearchSettings(num_videos=3, num_moments=12, alpha=5.0), (5, 9, 3, 7, 6), {}),
    (retrieval.SearchSettings(num_videos=5, num_moments=40, alpha=30.0, min_len=2, max_len=4), (5, 9, 3, 7, 6), {}),
    # many buckets of several blocks (the last ones part-filled), two threads, lengths above max_len
    (retrieval.SearchSettings(num_videos=9, num_moments=60, alpha=10.0, min_len=2, max_len=5), MANY,
     dict(granule=2, block_clips=8, threads=2, group_videos=2)),
    (retrieval.SearchSettings(num_videos=23, num_moments=300, alpha=3.0, min_len=3), MANY,
     dict(granule=3, block_clips=20, threads=3)),
])
def test_search_matches_brute_force(settings, lengths, layout):
    index = make_index(lengths=lengths)
    rng = np.random.default_rng(1)
    q, lq = rng.normal(size=(4, M, D)).astype(np.float32), rng.normal(size=(4, M, D)).astype(np.float32)
    ks, ke = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    searcher = retrieval.CorpusSearcher(index, ks, ke, settings, **layout)
    if layout:
        assert len(searcher.buckets) > 2 and max(len(b.videos) // b.per_block for b in searcher.buckets) > 1
    got = searcher.search(q, lq)
    for qi, (phi, top, moments) in enumerate(reference_search(index, q, lq, ks, ke, settings)):
        np.testing.assert_array_equal(got["video_rank"][qi], top)
        np.testing.assert_allclose(got["video_scores"][qi], phi[top], rtol=1e-5, atol=1e-6)
        ref_scores = np.asarray([m[0] for m in moments])
        np.testing.assert_allclose(got["moment_scores"][qi], ref_scores, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got["moment_videos"][qi], [m[1] for m in moments])
        np.testing.assert_allclose(got["moment_spans"][qi], [[m[2], m[3]] for m in moments], rtol=1e-5)


def test_ranking_in_chunks_of_queries_equals_ranking_all_at_once(monkeypatch):
    """The ranking runs over ``RANK_CHUNK`` queries at a time; the last chunk padded: same moments."""
    index = make_index(lengths=MANY)
    rng = np.random.default_rng(4)
    q, lq = rng.normal(size=(7, M, D)).astype(np.float32), rng.normal(size=(7, M, D)).astype(np.float32)
    settings = retrieval.SearchSettings(num_videos=6, num_moments=30, alpha=10.0, min_len=2, max_len=5)
    searcher = retrieval.CorpusSearcher(index, *rng.normal(size=(2, 5)).astype(np.float32), settings)
    whole = searcher.search(q, lq)
    monkeypatch.setattr(retrieval, "RANK_CHUNK", 3)  # chunks of 3, 3 and 1 (+ 2 padded) queries
    chunked = searcher.search(q, lq)
    for key in whole:
        np.testing.assert_array_equal(chunked[key], whole[key])


def test_localize_in_a_given_video_matches_brute_force():
    index = make_index(2)
    rng = np.random.default_rng(3)
    lq = rng.normal(size=(3, M, D)).astype(np.float32)
    ks, ke = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    settings = retrieval.SearchSettings(num_moments=6, max_len=3)
    videos = np.array([1, 4, 2])
    got = retrieval.CorpusSearcher(index, ks, ke, settings).localize_in(videos, lq)
    for qi, v in enumerate(videos):
        a, b = index.offsets[v], index.offsets[v + 1]
        n, d = b - a, index.durations[v]
        s = np.mean([index.context[m, a:b] @ lq[qi, m] for m in range(M)], axis=0)
        ls = log_softmax(np.correlate(np.pad(s, 2), ks, "valid"))
        le = log_softmax(np.correlate(np.pad(s, 2), ke, "valid"))
        ref = sorted(((ls[i] + le[j], i / n * d, (j + 1) / n * d) for i in range(n) for j in range(i, min(n, i + 3))),
                     key=lambda m: -m[0])[:6]
        finite = np.isfinite(got["moment_scores"][qi])
        assert finite.sum() == len(ref)
        np.testing.assert_allclose(got["moment_scores"][qi][finite], [r[0] for r in ref], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["moment_spans"][qi][finite], [[r[1], r[2]] for r in ref], rtol=1e-5)


def test_index_round_trip(tmp_path):
    index = make_index()
    index.save(str(tmp_path / "idx"))
    loaded = retrieval.CorpusIndex.load(str(tmp_path / "idx"))
    assert loaded.vids == index.vids and loaded.info == index.info
    assert isinstance(loaded.context, np.memmap)  # memory-mapped, not read
    for name in ("durations", "offsets", "norms", "context"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(index, name))
    with pytest.raises(FileNotFoundError, match="not a corpus index"):
        retrieval.CorpusIndex.load(str(tmp_path))


def _encoder_and_batches():
    """A fake context encoder and two batches: video 'a' twice in batch 1, 'b' in both, padding in batch 2."""
    def encode(batch):
        b, t = batch["video_mask"].shape
        ctx = np.arange(b * M * t * D, dtype=np.float32).reshape(b, M, t, D) + 1
        return {"context": ctx}

    vm = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    ctx_of_row0 = (np.arange(3 * M * 4 * D, dtype=np.float32).reshape(3, M, 4, D) + 1)[0]
    batch1 = {"vid": np.array([b"a", b"b", b"a"]), "video_mask": vm, "duration": np.array([3.0, 2.0, 3.0]),
              "example_mask": np.ones(3)}
    batch2 = {"vid": np.array([b"b", b"c", b""]), "video_mask": vm, "duration": np.array([2.0, 4.0, 0.0]),
              "example_mask": np.array([1, 1, 0.0])}
    return encode, [batch1, batch2], ctx_of_row0


def test_build_index_encodes_each_video_once_unpadded():
    encode, batches, ctx_of_row0 = _encoder_and_batches()
    index = retrieval.build_index(encode, batches, {})
    assert index.vids == ["a", "b", "c"]
    np.testing.assert_array_equal(index.offsets, [0, 3, 5, 7])  # a: 3 clips, b: 2, c (row 1 of batch 2): 2
    np.testing.assert_array_equal(index.context[:, 0:3], ctx_of_row0[:, :3])  # a = batch 1 row 0, its 3 clips
    np.testing.assert_allclose(index.norms, np.linalg.norm(index.context, axis=-1), rtol=1e-6)


def test_an_index_built_on_disk_equals_the_one_built_in_memory(tmp_path):
    """Streamed to disk (rows appended per stream, copied into context.npy 2 clips at a time), the index
    is the in-memory one, memory-mapped; no part file is left."""
    encode, batches, _ = _encoder_and_batches()
    index = retrieval.build_index(encode, batches, {"model": "x"})
    on_disk = retrieval.build_index(encode, batches, {"model": "x"}, directory=str(tmp_path / "idx"), chunk_rows=2)
    assert isinstance(on_disk.context, np.memmap) and on_disk.vids == index.vids and on_disk.info == {"model": "x"}
    for name in ("durations", "offsets", "norms", "context"):
        np.testing.assert_array_equal(getattr(on_disk, name), getattr(index, name))
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "context.npy", "durations.npy", "index.json", "norms.npy", "offsets.npy"]


def test_out_of_core_search_equals_in_memory_search(tmp_path):
    """The search layout on disk (memory-mapped), video scores computed a few blocks at a time: the same
    results as the in-memory layout, bit for bit."""
    index = make_index(lengths=MANY)
    rng = np.random.default_rng(1)
    q, lq = rng.normal(size=(4, M, D)).astype(np.float32), rng.normal(size=(4, M, D)).astype(np.float32)
    ks, ke = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    settings = retrieval.SearchSettings(num_videos=9, num_moments=60, alpha=10.0, min_len=2, max_len=5)
    layout = dict(granule=2, block_clips=8, group_videos=2)
    want = retrieval.CorpusSearcher(index, ks, ke, settings, **layout).search(q, lq)
    searcher = retrieval.CorpusSearcher(index, ks, ke, settings, **layout, layout_dir=str(tmp_path / "layout"),
                                        chunk_bytes=M * 8 * D * 4 * 2)  # two blocks of 8 clips per chunk
    assert all(isinstance(b.host_keys, np.memmap) and b.keys is None for b in searcher.buckets)
    assert max(b.host_keys.shape[0] for b in searcher.buckets) > 2  # several chunks in a bucket
    got = searcher.search(q, lq)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_corpus_evaluator_agrees_with_the_per_query_decoder():
    """SVMR from the corpus path = the model's own decoding in the query's video, in seconds."""
    from tests.test_reloclnet import make_batch, model_config
    cfg = model_config(num_candidates=400)
    model = registry.create_model(cfg.model, vocab_size=20)
    batch = make_batch()
    variables = nn.meta.unbox(model.init(jax.random.key(0), batch, train=False))
    out = model.apply(variables, batch, train=False)
    b = dict(batch, vid=np.array([f"v{i}".encode() for i in batch["video_index"]]),
             qid=np.array([f"q{i}".encode() for i in range(6)]), query=np.array([b"x"] * 6),
             query_type=np.array([b"v", b"t", b"vt", b"v", b"t", b"vt"]),
             duration=np.linspace(10, 20, 6).astype(np.float32),
             gt_spans=np.array([[[1.0, 3.0]]] * 6, np.float32), gt_spans_mask=np.ones((6, 1), np.float32))
    # Examples 1 and 2 share a video: give them the same features, as a real corpus would.
    for key in ("video_feats", "subtitle_feats", "video_mask"):
        b[key] = b[key].copy()
        b[key][2] = b[key][1]
    b["duration"][2] = b["duration"][1]
    out = model.apply(variables, b, train=False)

    def enc(method):
        return lambda x: model.apply(variables, {k: v for k, v in x.items() if v.dtype.kind != "S"}, train=False,
                                     method=method)
    settings = retrieval.SearchSettings(num_videos=5, num_moments=400)
    flat, pred = retrieval.evaluate_corpus(enc(model.encode_query), enc(model.encode_context), variables["params"],
                                           [b], settings, {})
    assert flat["num_videos"] == 5
    svmr = pred["submission"]["SVMR"]
    for q in range(6):
        spans, scores = (np.asarray(x)[q] for x in rl.predict_fn(out))
        keep = np.isfinite(scores)
        rows = np.asarray(svmr[q]["predictions"])
        n = min(len(rows), int(keep.sum()), 100)
        np.testing.assert_allclose(rows[:n, 1:3], spans[keep][:n] * b["duration"][q], rtol=1e-4, atol=1e-4)
    # VR ranks every video of the corpus; each query's own video is among them exactly once.
    for entry in pred["submission"]["VR"]:
        assert sorted(int(p[0]) for p in entry["predictions"]) == list(range(5))


@pytest.mark.parametrize("num_videos", [7, len(MANY)])  # re-scored then localised; both in one pass
def test_ann_path_probing_everything_equals_exact(num_videos):
    """With every list probed, every clip returned and every candidate re-scored, ANN = exact."""
    index = make_index(4, lengths=MANY)
    rng = np.random.default_rng(5)
    q, lq = rng.normal(size=(6, M, D)).astype(np.float32), rng.normal(size=(6, M, D)).astype(np.float32)
    ks, ke = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    settings = retrieval.SearchSettings(num_videos=num_videos, num_moments=30, alpha=10.0, min_len=2, max_len=6)
    exact = retrieval.CorpusSearcher(index, ks, ke, settings).search(q, lq)
    ann = retrieval.AnnSettings(nlist=4, nprobe=4, clips_per_stream=index.num_clips, rescore=index.num_videos)
    approx = retrieval.CorpusSearcher(index, ks, ke, settings, ann=ann).search(q, lq)
    for key in ("video_rank", "moment_videos"):
        np.testing.assert_array_equal(approx[key], exact[key])
    for key in ("video_scores", "moment_scores", "moment_spans"):
        np.testing.assert_allclose(approx[key], exact[key], rtol=1e-5, atol=1e-5)


def test_ann_finds_the_nearest_videos_and_pads_what_it_cannot_find():
    """Videos built around their own direction: a query near one video's clips finds it first
    through one probed list; asking for more videos than the candidates gives -1 / -inf pads
    that the TVR submission leaves out."""
    rng = np.random.default_rng(0)
    num_videos, n = 40, 6
    centres = rng.normal(size=(num_videos, M, D)).astype(np.float32)
    context = (np.repeat(centres, n, axis=0) + 0.05 * rng.normal(size=(num_videos * n, M, D))).astype(np.float32)
    context = np.ascontiguousarray(context.transpose(1, 0, 2))
    index = retrieval.CorpusIndex(vids=[f"v{i}" for i in range(num_videos)],
                                  durations=np.full(num_videos, 30.0, np.float32),
                                  offsets=np.arange(0, num_videos * n + 1, n), norms=retrieval.clip_norms(context),
                                  context=context, info={})
    target = rng.choice(num_videos, 8, replace=False)
    q = centres[target] + 0.05 * rng.normal(size=(8, M, D)).astype(np.float32)
    ks, ke = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    settings = retrieval.SearchSettings(num_videos=10, num_moments=20)
    ann = retrieval.AnnSettings(nlist=8, nprobe=2, clips_per_stream=12, rescore=5)
    got = retrieval.CorpusSearcher(index, ks, ke, settings, ann=ann).search(q, q)
    np.testing.assert_array_equal(got["video_rank"][:, 0], target)
    found = got["video_rank"] >= 0
    assert np.all(found.sum(1) <= 5) and np.all(~found[:, 5:])  # at most `rescore` candidates
    assert np.all(found[:, :-1] >= found[:, 1:]) and np.all(np.isneginf(got["video_scores"][~found]))
    assert np.all(np.isfinite(got["moment_scores"])) and set(np.unique(got["moment_videos"])) <= set(range(40))
    sub = retrieval.tvr_submission(index, [str(i) for i in range(8)], ["q"] * 8, got)
    assert [len(e["predictions"]) for e in sub["VR"]] == list(found.sum(1))
