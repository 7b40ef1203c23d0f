"""What pictures show: each model's evidence_fn against numpy written from its definition, one example's
evidence cut to its valid clips and words, and the PNGs jvmr.visualize draws from it."""

import io

import numpy as np
import pytest
from PIL import Image

from jvmr import visualize
from jvmr.models import cimha, cmin, ms2d, reloclnet

RNG = np.random.default_rng(0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _prefix_mask(lengths, t):
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def _softmax_on_valid(logits, mask):
    out = np.zeros_like(logits)
    for b in range(len(logits)):
        n = int(mask[b].sum())
        e = np.exp(logits[b, :n] - logits[b, :n].max())
        out[b, :n] = e / e.sum()
    return out


def test_cmin_evidence_is_the_best_anchor_confidence_on_each_clip_and_the_attention():
    b, t, k, length = 2, 7, 3, 5
    logits = RNG.normal(size=(b, t, k)).astype(np.float32)
    mask = (RNG.random((b, t, k)) > 0.3).astype(np.float32)
    mask[0, 2] = 0  # a clip where no anchor fits: confidence 0
    attention = RNG.random((b, t, length)).astype(np.float32)
    ev = cmin.evidence_fn({"anchor_logits": logits * mask, "anchor_mask": mask, "attention": attention})
    want = np.max(np.where(mask > 0, _sigmoid(logits), 0.0), axis=-1)
    np.testing.assert_allclose(ev["curves"]["anchor confidence (best width)"], want, rtol=1e-6)
    assert want[0, 2] == 0.0
    np.testing.assert_array_equal(ev["attention"]["video-to-word attention"], attention)


@pytest.mark.parametrize("segmentation", [True, False])
def test_cimha_evidence_is_the_boundary_distributions_and_the_segment_probability(segmentation):
    b, t = 3, 9
    vmask = _prefix_mask([9, 5, 1], t)
    start, end, seg = (RNG.normal(size=(b, t)).astype(np.float32) * 3 for _ in range(3))
    outputs = {"start_logits": start, "end_logits": end, "video_mask": vmask}
    if segmentation:
        outputs["segment_logits"] = seg
    curves = cimha.evidence_fn(outputs)["curves"]
    np.testing.assert_allclose(curves["start probability"], _softmax_on_valid(start, vmask), atol=1e-6)
    np.testing.assert_allclose(curves["end probability"], _softmax_on_valid(end, vmask), atol=1e-6)
    np.testing.assert_allclose(np.asarray(curves["start probability"]).sum(1), 1.0, rtol=1e-5)
    assert ("segment probability" in curves) == segmentation
    if segmentation:
        np.testing.assert_allclose(curves["segment probability"], _sigmoid(seg) * vmask, rtol=1e-6)


def test_reloclnet_evidence_is_the_mean_over_streams_of_query_clip_similarity():
    b, m, t, d = 2, 2, 6, 4
    vmask = _prefix_mask([6, 3], t)
    local_query = RNG.normal(size=(b, m, d)).astype(np.float32)
    context = RNG.normal(size=(b, m, t, d)).astype(np.float32)
    start, end = RNG.normal(size=(2, b, t)).astype(np.float32)
    curves = reloclnet.evidence_fn({"local_query": local_query, "context": context, "video_mask": vmask,
                                    "start_logits": start, "end_logits": end})["curves"]
    want = np.zeros((b, t), np.float32)
    for i in range(b):
        for c in range(int(vmask[i].sum())):
            want[i, c] = np.mean([local_query[i, s] @ context[i, s, c] for s in range(m)])
    np.testing.assert_allclose(curves["clip similarity"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curves["end probability"], _softmax_on_valid(end, vmask), atol=1e-6)


def test_ms2d_evidence_spreads_each_cell_over_its_clip_pairs():
    b, t = 2, 8
    maps = []
    for stride in (1, 4):
        n = t // stride
        logits = RNG.normal(size=(b, n, n)).astype(np.float32)
        mask = np.triu(np.ones((n, n), np.float32))[None].repeat(b, 0)
        mask[1, :, n // 2:] = 0  # a shorter video
        maps.append((logits, mask))
    got = ms2d.evidence_fn({"video_mask": np.ones((b, t), np.float32), "score_maps": tuple(maps)})["maps"]
    assert list(got) == ["2D score map, stride 1", "2D score map, stride 4"]
    for (logits, mask), stride in zip(maps, (1, 4)):
        values = np.asarray(got[f"2D score map, stride {stride}"])
        assert values.shape == (b, t, t)
        for i in range(b):
            for start in range(t):
                for end in range(t):
                    cell = (i, start // stride, end // stride)
                    if mask[cell]:
                        assert values[i, start, end] == pytest.approx(_sigmoid(logits[cell]), rel=1e-6)
                    else:
                        assert np.isnan(values[i, start, end])


def test_example_evidence_cuts_one_example_to_its_clips_and_words():
    t, length = 6, 5
    batch = {"video_mask": _prefix_mask([6, 4], t), "query_mask": _prefix_mask([5, 2], length),
             "query_tokens": np.array([[0, 1, 2, 3, 4], [3, 2, 0, 0, 0]])}
    evidence = {"curves": {"start probability": RNG.random((2, t)), "end probability": RNG.random((2, t)),
                           "clip similarity": RNG.random((2, t))},
                "maps": {"m": RNG.random((2, t, t))}, "attention": {"a": RNG.random((2, t, length))}}
    cut, words = visualize.example_evidence(evidence, batch, 1, ["<pad>", "<unk>", "a", "door", "opens"])
    assert words == ["door", "a"]
    assert list(cut["curves"]) == ["start probability", "end probability", "clip similarity"]
    np.testing.assert_allclose(cut["curves"]["clip similarity"], evidence["curves"]["clip similarity"][1, :4])
    np.testing.assert_allclose(cut["maps"]["m"], evidence["maps"]["m"][1, :4, :4])
    np.testing.assert_allclose(cut["attention"]["a"], evidence["attention"]["a"][1, :4, :2])


def _image(png):
    image = Image.open(io.BytesIO(png))
    image.verify()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _timeline(**evidence):
    return visualize.Timeline("a person opens the door", "v1", 12.0, [(2.0, 5.0, 0.9), (6.0, 9.5, 0.4)],
                              ground_truth=[(2.5, 5.5)], evidence=evidence, words=["person", "opens", "door"])


def test_a_timeline_has_one_panel_per_piece_of_evidence():
    spans_only = _image(visualize.timeline_png(_timeline()))
    full = _image(visualize.timeline_png(_timeline(
        curves={"start probability": RNG.random(10), "end probability": RNG.random(10)},
        maps={"2D score map": np.triu(RNG.random((10, 10))) + np.tril(np.full((10, 10), np.nan), -1)},
        attention={"video-to-word attention": RNG.random((10, 3))})))
    for image in (spans_only, full):
        assert image.ndim == 3 and image.shape[1] == 900
        assert image.reshape(-1, 3).std(0).max() > 10  # drawn, not blank
        # The ground truth's green and the predictions' blue are on it.
        assert np.any(np.all(image == [0x2C, 0xA0, 0x2C], axis=-1))
        assert np.any(np.all(image == [0x1F, 0x77, 0xB4], axis=-1))
    assert full.shape[0] > spans_only.shape[0] + 500


def test_the_attention_picture_needs_attention():
    picture = _image(visualize.attention_png(_timeline(attention={"video-to-word attention": RNG.random((10, 3))})))
    assert picture.shape[0] > 100
    with pytest.raises(ValueError, match="v1: this model's evidence has no attention map"):
        visualize.attention_png(_timeline(curves={"start probability": RNG.random(10)}))
