"""TFDS builders: built offline from a fabricated manual_dir, equal to what data_prep.build writes."""

import json
import os
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import tfds_builders
from jvmr.data import schema
from test_build import FIXTURES, fake_features, run_build, write_hdf5, write_npy_dir


@pytest.fixture()
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def prepare(name: str, data_dir: str, manual_dir: str):
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def test_charades_sta_builder_matches_data_prep(tmp_path, offline):
    manual = tmp_path / "manual"
    manual.mkdir()
    for split, n in (("train", 40), ("test", 15)):
        with open(os.path.join(FIXTURES, "charades_sta", f"charades_sta_{split}.txt")) as f:
            lines = f.read().splitlines()[:n]
        if split == "train":
            lines[3] = lines[3].split(" ")[0] + " 7.0 7.0##" + lines[3].split("##")[1]  # start == end.
        (manual / f"charades_sta_{split}.txt").write_text("\n".join(lines) + "\n")
    (manual / "charades.json").symlink_to(os.path.join(FIXTURES, "charades_sta", "charades.json"))
    vids = sorted({line.split()[0] for p in manual.glob("*.txt") for line in p.read_text().splitlines()})
    write_npy_dir(manual / "i3d_features", vids, t=3, dim=1024)

    builder = prepare("charades_sta/tokens", str(tmp_path / "data"), str(manual))
    assert builder.info.splits["train"].num_examples == 39 and builder.info.splits["test"].num_examples == 15
    # The report is stored with the dataset and survives reloading it from disk.
    reloaded = tfds.builder("charades_sta/tokens", data_dir=str(tmp_path / "data"))
    report = reloaded.info.metadata["reports"]["train"]
    assert report["num_records"] == 40 and report["skipped"] == {"start_ge_end": 1}
    assert "line 4" in report["messages"]["skipped:start_ge_end"][0]

    out = str(tmp_path / "out")
    run_build("--dataset=charades_sta", f"--annotations={manual}", f"--features={manual}/i3d_features",
              f"--output_dir={out}", "--parser=none")
    for split in ("train", "test"):
        want = {e.qid: e for e in schema.read_split(out, split)}
        got = {ex["qid"].decode(): ex for ex in tfds.as_numpy(reloaded.as_dataset(split=split))}
        assert sorted(got) == sorted(want)
        for qid, ex in got.items():
            w = want[qid]
            assert (ex["vid"].decode(), ex["query"].decode(), [t.decode() for t in ex["tokens"]],
                    ex["dep_heads"].tolist(), [t.decode() for t in ex["dep_labels"]]) == (
                w.vid, w.query, w.tokens, w.dep_heads, w.dep_labels)
            assert ex["duration"] == np.float32(w.duration)
            np.testing.assert_array_equal(ex["gt_spans"], w.gt_spans)
            np.testing.assert_array_equal(ex["video_features"], fake_features(w.vid, 3, 1024))


def test_tvr_builder_with_streams(tmp_path, offline):
    manual = tmp_path / "manual"
    manual.mkdir()
    with open(os.path.join(FIXTURES, "tvr", "tvr_val_release.jsonl")) as f:
        lines = f.read().splitlines()[:25]
    (manual / "tvr_val_release.jsonl").write_text("\n".join(lines) + "\n")
    records = [json.loads(line) for line in lines]
    vids = sorted({r["vid_name"] for r in records})
    (manual / "tvr_video2dur_idx.json").write_text(json.dumps(
        {"val": {v: [next(r["duration"] for r in records if r["vid_name"] == v), i] for i, v in enumerate(vids)}}))
    write_hdf5(manual / "tvr_resnet152_rgb_max_i3d_rgb600_avg_cat_cl-1.5.h5", vids, t=4, dim=3072)
    write_hdf5(manual / "tvr_sub_pretrained_w_sub_query_max_cl-1.5.h5", vids, t=4, dim=768)
    write_hdf5(manual / "tvr_query_pretrained_w_sub_query.h5", [str(r["desc_id"]) for r in records], t=3, dim=768)

    builder = prepare("tvr/tokens", str(tmp_path / "data"), str(manual))
    assert list(builder.info.splits) == ["val"] and builder.info.splits["val"].num_examples == 25
    by_qid = {str(r["desc_id"]): r for r in records}
    for ex in tfds.as_numpy(builder.as_dataset(split="val")):
        qid, vid = ex["qid"].decode(), ex["vid"].decode()
        r = by_qid[qid]
        assert (vid, ex["query_type"].decode()) == (r["vid_name"], r["type"])
        np.testing.assert_allclose(ex["gt_spans"], [r["ts"]], rtol=1e-6)
        np.testing.assert_array_equal(ex["video_features"], fake_features(vid, 4, 3072))
        np.testing.assert_array_equal(ex["subtitle_features"], fake_features(vid, 4, 768))
        np.testing.assert_array_equal(ex["query_features"], fake_features(qid, 3, 768))
    # A manual_dir without the required features names what is missing.
    os.remove(manual / "tvr_query_pretrained_w_sub_query.h5")
    with pytest.raises(FileNotFoundError, match="no query features"):
        prepare("tvr/tokens", str(tmp_path / "data2"), str(manual))
    assert tfds_builders.Tvr.MANUAL_DOWNLOAD_INSTRUCTIONS.count("tvr_query_pretrained_w_sub_query.h5") == 1
