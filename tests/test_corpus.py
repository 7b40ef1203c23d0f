"""The embedded corpus benchmark (jvmr.data.corpus): unique answers across the corpus, description
types, the subtitle stream, the written schema."""

import collections

import numpy as np
import pytest

from jvmr.data import corpus, pipeline, schema, synthetic
from configs import datasets

SMALL = corpus.CorpusConfig(synthetic=synthetic.SyntheticConfig(
    num_train=300, num_val=60, num_test=600, num_test_novel=0, num_test_paraphrase=0, parser="gold",
    feature_dim=32), subtitle_dim=16)


@pytest.fixture(scope="module")
def test_videos():
    return corpus.generate_videos(SMALL, "test")


def test_every_query_has_one_answer_in_the_corpus(test_videos):
    assert sum(len(v.queries) for v in test_videos) > 400
    for i, v in enumerate(test_videos):
        for q in v.queries:
            assert corpus.corpus_answers(test_videos, q) == [(i, tuple(q["targets"]))], q["text"]


def test_description_types_read_only_their_streams(test_videos):
    lex = synthetic.Lexicon.of(SMALL.synthetic)
    visual = {w for forms in lex.actions.values() for f in forms for part in f for w in part.split()}
    visual |= {w for forms in lex.objects.values() for w in forms}
    topics = set(corpus.TOPICS)
    counts = collections.Counter()
    for v in test_videos:
        for q in v.queries:
            words = set(q["tokens"])
            counts[q["desc_type"]] += 1
            if q["desc_type"] == "t":
                assert not words & visual and len(words & topics) == 2, q["text"]
            elif q["desc_type"] == "v":
                assert not words & topics and words & visual, q["text"]
            else:
                assert words & visual and len(words & topics) == 1, q["text"]
    assert all(counts[d] > 50 for d in corpus.DESC_TYPES), counts


def test_topic_alone_finds_the_video_only_with_the_composition(test_videos):
    """vt: the topic names one event in several videos; the composition is needed to pick the video."""
    by_topic = collections.Counter(k for v in test_videos for k in v.topics)
    vt = [q for v in test_videos for q in v.queries if q["desc_type"] == "vt"]
    ambiguous = np.mean([by_topic[q["semantics"]["topic"]] > 1 for q in vt])
    assert ambiguous > 0.9


def test_subtitles_carry_the_topic(test_videos):
    topics, _ = corpus.topic_prototypes(SMALL)
    hits = total = clip_hits = clips = 0
    for v in test_videos[:100]:
        assert v.subtitles.shape == (v.video.num_clips, SMALL.subtitle_dim)
        for e, name in zip(v.video.events, v.topics):
            lo = int(np.ceil(e.start / v.video.clip_seconds))
            hi = int(np.floor(e.end / v.video.clip_seconds))
            if hi - lo < 2:
                continue
            k = corpus.TOPICS.index(name)
            hits += int(np.argmax(topics @ v.subtitles[lo:hi].mean(0)) == k)
            clip_hits += int(np.sum(np.argmax(v.subtitles[lo:hi] @ topics.T, axis=1) == k))
            total, clips = total + 1, clips + hi - lo
    # An event's clips name its topic; a single clip is noisy (but far above chance, 1 / 84).
    assert total > 100 and hits / total > 0.95
    assert 0.1 < clip_hits / clips < hits / total


def test_generation_is_deterministic():
    a = corpus.generate_videos(SMALL, "val")
    b = corpus.generate_videos(SMALL, "val")
    assert [q["text"] for v in a for q in v.queries] == [q["text"] for v in b for q in v.queries]
    np.testing.assert_array_equal(a[0].subtitles, b[0].subtitles)


def test_build_writes_both_streams_through_the_pipeline(tmp_path):
    data_dir = str(tmp_path / "data")
    manifest = corpus.build(data_dir, SMALL)
    assert manifest["dataset"] == "synthetic_corpus"
    assert manifest["feature_dims"] == {"video": 32, "subtitle": 16}
    assert set(manifest["query_types"]["test"]) == set(corpus.DESC_TYPES)
    assert corpus.build(data_dir, SMALL) == manifest  # idempotent
    ex = next(iter(schema.read_split(data_dir, "val")))
    assert ex.subtitle_features.shape == (ex.video_features.shape[0], 16) and ex.query_type in corpus.DESC_TYPES
    cfg = datasets.dataset_config("synthetic_corpus")
    cfg.feature_dim, cfg.subtitle_dim = 32, 16
    b = next(pipeline.as_numpy(pipeline.make_dataset(data_dir, "val", cfg, batch_size=8, training=False,
                                                     inputs=("subtitles", "video_index"))))
    assert b["subtitle_feats"].shape == (8, cfg.max_video_len, 16)
    # Records of one video share its index.
    same = b["vid"][:, None] == b["vid"][None, :]
    np.testing.assert_array_equal(b["video_index"][:, None] == b["video_index"][None, :], same)


def test_train_queries_are_unique_in_their_video_and_follow_the_mix():
    videos = corpus.generate_videos(SMALL, "train")
    types = collections.Counter()
    for i, v in enumerate(videos):
        for q in v.queries:
            types[q["desc_type"]] += 1
            answers = corpus.corpus_answers([v], q)
            assert answers == [(0, tuple(q["targets"]))], q["text"]
    total = sum(types.values())
    for d, w in SMALL.type_weights.items():
        assert abs(types[d] / total - w / sum(SMALL.type_weights.values())) < 0.05, types
