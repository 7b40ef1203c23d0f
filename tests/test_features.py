"""Feature readers: every on-disk format at the real dims, lookup rules, error paths, normalisation."""

import h5py
import numpy as np
import pytest

from jvmr.data import features
from jvmr.data.features import FeatureError
from jvmr.data.pipeline import resample_features_np


def random_feats(seed: int, t: int, d: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(t, d)).astype(dtype)


@pytest.fixture()
def i3d_dir(tmp_path):
    """Charades-STA I3D: a folder of <vid>.npy, [T, 1024]."""
    folder = tmp_path / "i3d"
    folder.mkdir()
    data = {"3MSZA": random_feats(0, 37, 1024), "AMT7R": random_feats(1, 5, 1024), "s30-d52": random_feats(2, 9, 1024)}
    for vid, x in data.items():
        np.save(folder / f"{vid}.npy", x)
    (folder / "notes.txt").write_text("not a feature file")
    return str(folder), data


@pytest.fixture()
def c3d_hdf5(tmp_path):
    """ActivityNet C3D-PCA: one HDF5 with groups <vid>/c3d_features [T, 500]."""
    path = str(tmp_path / "sub_activitynet_v1-3.c3d.hdf5")
    data = {"v_QOlSCBRmfWY": random_feats(3, 61, 500), "v_ehGHCYKzyZ8": random_feats(4, 12, 500, np.float64)}
    with h5py.File(path, "w") as f:
        for vid, x in data.items():
            f.create_group(vid).create_dataset("c3d_features", data=x)
    return path, data


def test_npy_dir_round_trip_and_lookup(i3d_dir):
    path, data = i3d_dir
    with features.open_features(path) as store:
        assert store.fmt == "npy_dir" and store.path == path
        assert store.keys() == sorted(data) and len(store) == 3
        for vid, x in data.items():
            got = store.get(vid)
            assert got.dtype == np.float32 and got.shape == x.shape
            np.testing.assert_array_equal(got, x)
        # Charades annotations may name the video file: the extension is stripped on lookup.
        assert "s30-d52.avi" in store and "s30-d52.mp4" in store
        np.testing.assert_array_equal(store.get("s30-d52.avi"), data["s30-d52"])
        assert "notes" not in store and "UNKNOWN" not in store


def test_hdf5_group_with_sub_key(c3d_hdf5):
    path, data = c3d_hdf5
    for key in ("c3d_features", None):  # Explicit sub key, or the group's only dataset.
        with features.open_features(path, "auto", key=key) as store:
            assert store.fmt == "hdf5" and store.keys() == sorted(data)
            for vid, x in data.items():
                got = store.get(vid)
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, x.astype(np.float32))


def test_hdf5_per_video(tmp_path):
    folder = tmp_path / "anet_h5"
    folder.mkdir()
    data = {"v_QOlSCBRmfWY": random_feats(5, 40, 500), "v_ehGHCYKzyZ8": random_feats(6, 3, 500)}
    for i, (vid, x) in enumerate(data.items()):
        with h5py.File(folder / f"{vid}{('.h5', '.hdf5')[i]}", "w") as f:
            f.create_dataset("feature", data=x)
            f.create_dataset("other", data=np.zeros((2, 2)))
    with features.open_features(str(folder)) as store:
        assert store.fmt == "hdf5_per_video" and store.key == "feature" and store.keys() == sorted(data)
        for vid, x in data.items():
            np.testing.assert_array_equal(store.get(vid), x)
    with features.open_features(str(folder), "hdf5_per_video", key="other") as store:
        np.testing.assert_array_equal(store.get("v_QOlSCBRmfWY"), np.zeros((2, 2), np.float32))
    with features.open_features(str(folder), key="c3d") as store:
        with pytest.raises(FeatureError, match=r"v_QOlSCBRmfWY\.h5: video 'v_QOlSCBRmfWY': no dataset 'c3d'"):
            store.get("v_QOlSCBRmfWY")


def test_tvr_style_hdf5(tmp_path):
    """TVR: video [T, 3072] and subtitle [S, 768] keyed by vid_name, query tokens [L, 768] keyed by desc_id."""
    vids = {"friends_s01e03_seg02_clip_19": 24, "castle_s01e02_seg02_clip_09": 60}
    desc_ids = {90200: 11, 12345: 25}
    files = {"video": {}, "sub": {}, "query": {}}
    for i, (vid, t) in enumerate(vids.items()):
        files["video"][vid] = random_feats(10 + i, t, 3072)
        files["sub"][vid] = random_feats(20 + i, t // 3 + 1, 768)
    for i, (desc_id, n) in enumerate(desc_ids.items()):
        files["query"][str(desc_id)] = random_feats(30 + i, n, 768)
    for name, content in files.items():
        with h5py.File(tmp_path / f"tvr_{name}.h5", "w") as f:
            for k, x in content.items():
                f.create_dataset(k, data=x)
    for name, content in files.items():
        with features.open_features(str(tmp_path / f"tvr_{name}.h5")) as store:
            assert store.keys() == sorted(content)
            for k, x in content.items():
                np.testing.assert_array_equal(store.get(k), x)
    with features.open_features(str(tmp_path / "tvr_query.h5")) as store:
        assert store.get(str(90200)).shape == (11, 768)


def test_store_closes(c3d_hdf5):
    path, _ = c3d_hdf5
    store = features.open_features(path)
    with store:
        store.get("v_QOlSCBRmfWY")
    with pytest.raises(FeatureError, match="closed"):
        store.get("v_QOlSCBRmfWY")
    store.close()  # Idempotent.
    with h5py.File(path, "a"):  # The file handle is released.
        pass


def write_npy(folder, vid, array):
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{vid}.npy", array)
    return str(folder)


@pytest.mark.parametrize("array, message", [
    (np.zeros(1024, np.float32), r"must be \[T, D\], got shape \(1024,\)"),
    (np.zeros((2, 3, 1024), np.float32), r"must be \[T, D\], got shape \(2, 3, 1024\)"),
    (np.zeros((0, 1024), np.float32), r"empty features, shape \(0, 1024\)"),
    (np.array([[0.0, np.nan], [1.0, 2.0], [np.inf, 0.0]], np.float32), "NaN or Inf in 2 of 3 clips"),
    (np.array([["a", "b"]]), "must be numeric"),
])
def test_bad_arrays_name_file_and_video(tmp_path, array, message):
    folder = write_npy(tmp_path / "feats", "AO8RW", array)
    with features.open_features(folder) as store:
        with pytest.raises(FeatureError, match=r"AO8RW\.npy: video 'AO8RW\.avi': .*" + message):
            store.get("AO8RW.avi")


def test_bad_arrays_in_hdf5(tmp_path):
    path = str(tmp_path / "f.hdf5")
    with h5py.File(path, "w") as f:
        f.create_dataset("nan_vid", data=np.full((3, 500), np.nan, np.float32))
        f.create_dataset("flat_vid", data=np.zeros(500, np.float32))
        g = f.create_group("two_vid")
        g.create_dataset("a", data=np.zeros((2, 500)))
        g.create_dataset("b", data=np.zeros((2, 500)))
    with features.open_features(path) as store:
        with pytest.raises(FeatureError, match=r"f\.hdf5: video 'nan_vid': NaN or Inf in 3 of 3"):
            store.get("nan_vid")
        with pytest.raises(FeatureError, match=r"f\.hdf5: video 'flat_vid': .*got shape \(500,\)"):
            store.get("flat_vid")
        with pytest.raises(FeatureError, match=r"video 'two_vid' is a group with members \['a', 'b'\]; pass key="):
            store.get("two_vid")
        with pytest.raises(FeatureError, match=r"f\.hdf5: no features for video 'missing' \(hdf5 with 3 videos"):
            store.get("missing")
        assert "missing" not in store and "." not in store and "two_vid/a" not in store
    with features.open_features(path, key="c3d_features") as store:
        with pytest.raises(FeatureError, match="video 'nan_vid' is a dataset, not a group"):
            store.get("nan_vid")
        with pytest.raises(FeatureError, match=r"video 'two_vid': group has no dataset 'c3d_features' \(has"):
            store.get("two_vid")


def test_missing_video_names_path_and_examples(i3d_dir):
    path, _ = i3d_dir
    with features.open_features(path) as store:
        with pytest.raises(FeatureError) as err:
            store.get("ZZZZZ.mp4")
    msg = str(err.value)
    assert path in msg and "'ZZZZZ.mp4'" in msg and "'3MSZA'" in msg and "npy_dir with 3 videos" in msg


def test_open_errors(tmp_path):
    with pytest.raises(FeatureError, match="does not exist"):
        features.open_features(str(tmp_path / "nope"))
    with pytest.raises(FeatureError, match="HDF5 feature file not found"):
        features.open_features(str(tmp_path / "nope.h5"), "hdf5")
    with pytest.raises(FeatureError, match="feature folder not found"):
        features.open_features(str(tmp_path / "nope"), "npy_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureError, match="no .npy or HDF5 files"):
        features.open_features(str(tmp_path / "empty"))
    mixed = tmp_path / "mixed"
    write_npy(mixed, "a", np.zeros((1, 2)))
    (mixed / "b.h5").write_bytes(b"")
    with pytest.raises(FeatureError, match="both .npy and HDF5 files"):
        features.open_features(str(mixed))
    dup = tmp_path / "dup"
    dup.mkdir()
    (dup / "v1.h5").write_bytes(b"")
    (dup / "v1.hdf5").write_bytes(b"")
    with pytest.raises(FeatureError, match="video 'v1' has two feature files"):
        features.open_features(str(dup))
    (tmp_path / "feats.txt").write_text("x")
    with pytest.raises(FeatureError, match="cannot tell the feature format"):
        features.open_features(str(tmp_path / "feats.txt"))
    (tmp_path / "broken.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(FeatureError, match=r"broken\.h5: cannot open as HDF5"):
        features.open_features(str(tmp_path / "broken.h5"))
    with pytest.raises(FeatureError, match="unknown feature format 'pt'"):
        features.open_features(str(tmp_path), "pt")


@pytest.mark.parametrize("name, content, message", [
    ("v2.h5", b"garbage", r"v2\.h5: video 'v2': cannot open as HDF5"),
    ("v3.npy", b"\x93NUMPY garbage", r"v3\.npy: video 'v3': cannot read \.npy"),
])
def test_corrupt_video_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with features.open_features(str(tmp_path)) as store:
        with pytest.raises(FeatureError, match=message):
            store.get(name.split(".")[0])


def test_l2_normalize_matches_numpy():
    x = random_feats(7, 13, 1024)
    x[4] = 0.0  # All-zero rows stay zero instead of becoming NaN.
    expected = x / np.maximum(np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True), 1e-6)
    got = features.l2_normalize(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[4], 0.0)
    np.testing.assert_allclose(np.linalg.norm(np.delete(got, 4, 0), axis=1), 1.0, rtol=1e-5)
    batched = features.l2_normalize(np.stack([x, 2 * x]))  # Any leading dims.
    np.testing.assert_allclose(batched[1], got, rtol=1e-6, atol=1e-7)


def linspace_mean_pool(x: np.ndarray, num_clips: int) -> np.ndarray:
    """Plain loop of 2D-TAN's average_to_fixed_length / VSLNet's visual_feature_sampling.

    Bin bounds round(i T / n), capped at T - 1; a bin is the mean of [s, e), or clip s when empty.
    """
    t = x.shape[0]
    bounds = [min(int(round(i / num_clips * t)), t - 1) for i in range(num_clips + 1)]
    out = []
    for i in range(num_clips):
        s, e = bounds[i], bounds[i + 1]
        out.append(x[s:e].astype(np.float64).mean(0) if s < e else x[s].astype(np.float64))
    return np.stack(out)


@pytest.mark.parametrize("t, num_clips", [(37, 16), (5, 16), (16, 16), (61, 7), (1, 4), (5, 6), (200, 128)])
def test_resample_composes_with_stores(tmp_path, t, num_clips):
    x = random_feats(t, t, 1024)
    with features.open_features(write_npy(tmp_path / "grid", "vid", x)) as store:
        feats = store.get("vid")
    for normalize in (False, True):
        inp = features.l2_normalize(feats) if normalize else feats
        got = resample_features_np(inp, num_clips)
        assert got.shape == (num_clips, 1024) and got.dtype == np.float32
        np.testing.assert_allclose(got, linspace_mean_pool(inp, num_clips), rtol=1e-5, atol=1e-6)


def test_errors_carry_a_reason(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "ok.npy", np.ones((2, 3), np.float32))
    np.save(folder / "nan.npy", np.full((2, 3), np.nan, np.float32))
    np.save(folder / "flat.npy", np.ones(3, np.float32))
    with features.open_features(str(folder)) as store:
        for vid, reason in (("absent", "missing"), ("nan", "nonfinite"), ("flat", "bad")):
            with pytest.raises(features.FeatureError) as info:
                store.get(vid)
            assert info.value.reason == reason
