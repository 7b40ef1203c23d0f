r"""Find the moments a sentence describes in one's own videos, with a trained run.

    python -m jvmr.predict --workdir=/tmp/cmin --features=VIDEO.npy --clip_seconds=1.0 \
        --query="a person opens the door" [--query="..." | --query_file=QUERIES.txt] [--k=5] \
        [--output=predictions.jsonl] [--pictures=DIR]
    python -m jvmr.predict --exported=/tmp/cmin_export ...   # the artifact of python -m jvmr.export

``--features`` is one ``<vid>.npy`` file ([T, D] clip features), a folder of them, an HDF5
file keyed by video id, or a folder of per-video HDF5 files (``jvmr.data.features``);
``--vid`` picks videos of a folder or HDF5 file (default: all), ``--feature_key`` the array
inside an HDF5 group. Every query is localised in every video. The duration is
``--duration`` seconds or T x ``--clip_seconds`` (the features' rate). The features must
have the width the model was trained on; a video longer than the model's clip grid is
mean-pooled to it (a note says so), as the training pipeline does.

A sentence becomes the model's input exactly as the run's queries did: the run's
vocabulary (an unknown word becomes the unknown token, with a warning naming it) and
its tokenisation: spaCy when its data was parsed with spaCy or when the model reads
dependency trees (CMIN), else the parser-free word split of ``data_prep --parser=none``.
The examples go through the training pipeline's own preprocessing
(``jvmr.data.pipeline.examples_dataset``), the model's ``predict_fn`` scores candidate
spans, and the run's evaluation protocol ranks them (its NMS, then top k).

Prints a table of the top-k moments in seconds; ``--output`` writes JSONL rows in the
moment_detr format (``qid``, ``query``, ``vid``, ``duration``, ``pred_relevant_windows``
as ``[start, end, score]`` rows); ``--pictures`` draws each query's timeline (the top-k spans over
the model's per-clip evidence, ``jvmr.visualize``) and, for CMIN, its video-to-word attention.
``predict(...)`` is the same from Python (``evidence=True``, then ``Prediction.timeline()``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from absl import app, flags, logging

from jvmr import fs, metrics, registry, search, visualize
from jvmr.data import features as features_lib
from jvmr.data import parsing, pipeline, schema, text

FLAGS = flags.FLAGS


class PredictError(ValueError):
    """Input that cannot be predicted on; the message names the file, video or query."""


@dataclasses.dataclass
class Moment:
    start: float  # seconds
    end: float
    score: float


@dataclasses.dataclass
class Prediction:
    qid: str
    query: str
    vid: str
    duration: float
    moments: list[Moment]  # best first
    # With predict(..., evidence=True): the model's per-clip evidence on the video's valid clips and the
    # query words it read (jvmr.visualize.example_evidence); pictures via timeline().
    evidence: dict[str, dict[str, np.ndarray]] | None = None
    words: list[str] | None = None
    ground_truth: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # seconds, when known

    def timeline(self, title: str = "") -> visualize.Timeline:
        """This prediction as a picture's content (``jvmr.visualize.timeline_png``)."""
        return visualize.Timeline(self.query, self.vid, self.duration, [(m.start, m.end, m.score) for m in
                                                                         self.moments],
                                  ground_truth=list(self.ground_truth), evidence=self.evidence or {},
                                  words=self.words or [], title=title)

    def to_json(self) -> dict[str, Any]:
        """The moment_detr prediction row."""
        return {"qid": self.qid, "query": self.query, "vid": self.vid, "duration": self.duration,
                "pred_relevant_windows": [[m.start, m.end, m.score] for m in self.moments]}


def read_videos(path: str, vids: Sequence[str] = (), key: str | None = None) -> dict[str, np.ndarray]:
    """Clip features [T, D] by video id from a ``.npy`` file (its name is the id), a folder or an HDF5 file
    (``vids``: the ids to read, default every one). Raises ``PredictError`` naming the file and video."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PredictError(f"{path}: no such feature file or folder")
    try:
        if os.path.isfile(path) and path.endswith(".npy"):
            vid = os.path.splitext(os.path.basename(path))[0]
            if vids and list(vids) != [vid]:
                raise PredictError(f"{path} holds video {vid!r} only, not {list(vids)}")
            return {vid: features_lib.check_features(np.load(path, allow_pickle=False), path, vid)}
        with features_lib.open_features(path, key=key) as store:
            wanted = list(vids) or store.keys()
            missing = [v for v in wanted if v not in store]
            if missing:
                raise PredictError(f"{path}: no features for video(s) {missing} ({len(store)} videos there)")
            return {v: store.get(v) for v in wanted}
    except PredictError:
        raise
    except features_lib.FeatureError as e:
        raise PredictError(str(e)) from e
    except (OSError, ValueError) as e:
        raise PredictError(f"{path}: cannot read features: {e}") from e


class Predictor:
    """A trained run, or its exported artifact, ready to localise sentences in new videos.

    Args:
      workdir: the run (``jvmr.main``'s ``--workdir``); ``step``: its checkpoint (default the latest).
      exported: instead of a run, an artifact of ``python -m jvmr.export`` (its StableHLO is what runs).
      batch_size: examples per forward pass at most (default: the run's evaluation batch size).
    """

    def __init__(self, workdir: str | None = None, step: int | None = None, batch_size: int = 0, *,
                 exported: str | None = None):
        if (workdir is None) == (exported is None):
            raise PredictError("give a trained run (workdir / --workdir) or an exported artifact (--exported)")
        if exported is not None:
            from jvmr import export
            artifact = export.load(exported)
            config, self.vocab_list, self.params = artifact["config"], artifact["vocab"], artifact["params"]
            data_parser, source = artifact["meta"]["parser"], exported
            functions = artifact["functions"]
        else:
            run = search.load_run(workdir, step)
            config, self.vocab_list, self.params = run["config"], run["vocab"], run["params"]
            data_parser, source = search.data_parser(run["data_dir"]), workdir
            from jvmr import export
            functions = export.run_functions(run)
        self._forward = jax.jit(functions["predict"])
        self._explain = jax.jit(functions["explain"]) if "explain" in functions else None
        self.config = config
        self.inputs = registry.get_model_spec(config.model.name).inputs(config.model)
        self.batch_size = int(batch_size or config.eval.batch_size)
        self.protocol = metrics.get_protocol(config.dataset.protocol or "jvmr")
        self.parser = parsing.QueryParser(data_parser, needs_tree="query_graph" in self.inputs)
        self.vocab = {w: i for i, w in enumerate(self.vocab_list)}
        self.source = source

    # ------------------------------------------------------------------ inputs

    def parse(self, sentences: Sequence[str]) -> list[parsing.ParsedQuery]:
        """Tokens (and trees) of ``sentences`` as the run's data had them; refuses an empty sentence and
        warns about words outside the vocabulary (they become the unknown token)."""
        for s in sentences:
            if not str(s).strip():
                raise PredictError("empty query: give a sentence")
        parsed = self.parser(list(sentences))
        for s, p in zip(sentences, parsed):
            if not p.tokens:
                raise PredictError(f"query {s!r} has no words (only punctuation?)")
            unknown = sorted({w for w in p.tokens if w not in self.vocab})
            if unknown:
                logging.warning("query %r: %d word(s) not in the run's vocabulary, read as %s: %s", s, len(unknown),
                                text.UNK_TOKEN, ", ".join(unknown))
        return parsed

    def _check_video(self, vid: str, feats: np.ndarray, subtitles: np.ndarray | None) -> None:
        ds = self.config.dataset
        dim = int(ds.feature_dim)
        if feats.shape[1] != dim:
            raise PredictError(f"video {vid!r}: {feats.shape[1]}-d features, but the model was trained on {dim}-d "
                               f"features ({ds.name}); extract them as its data were")
        if feats.shape[0] > int(ds.max_video_len):
            logging.info("video %r: %d clips, mean-pooled to the model's %d-clip grid", vid, feats.shape[0],
                         int(ds.max_video_len))
        if "subtitles" not in self.inputs:
            if subtitles is not None:
                logging.warning("video %r: the model reads no subtitle stream; its subtitle features are not used", vid)
        else:
            if subtitles is None:
                raise PredictError(f"video {vid!r}: the model reads a subtitle stream too; give its features "
                                   f"(--subtitles)")
            if subtitles.shape[1] != int(ds.subtitle_dim):
                raise PredictError(f"video {vid!r}: {subtitles.shape[1]}-d subtitle features, but the model was "
                                   f"trained on {int(ds.subtitle_dim)}-d")

    # ------------------------------------------------------------------ prediction

    def predict(self, videos: Mapping[str, np.ndarray], queries: Sequence[str], *, duration: float | None = None,
                clip_seconds: float | None = None, k: int = 5,
                subtitles: Mapping[str, np.ndarray] | None = None, evidence: bool = False) -> list[Prediction]:
        """The top ``k`` moments of every query in every video (video-major order).

        Args:
          videos: clip features [T, D] by video id.
          queries: sentences.
          duration / clip_seconds: each video's length in seconds, or the seconds one feature row covers
            (duration = T x clip_seconds); exactly one of them.
          subtitles: a subtitle stream [S, Ds] per video, for models that read one.
          evidence: also return the model's per-clip evidence and the words it read with each prediction
            (``Prediction.timeline()`` draws them; one forward pass either way).
        """
        if (duration is None) == (clip_seconds is None):
            raise PredictError("give the videos' duration in seconds or the seconds per feature row "
                               "(--duration or --clip_seconds), exactly one of them")
        if (duration is not None and not duration > 0) or (clip_seconds is not None and not clip_seconds > 0):
            raise PredictError(f"duration / clip_seconds must be positive, got {duration} / {clip_seconds}")
        if not videos:
            raise PredictError("no videos")
        if k < 1:
            raise PredictError(f"k must be >= 1, got {k}")
        if "query_features" in self.inputs:
            raise PredictError(f"{self.source}: this model reads pre-extracted query token features (e.g. TVR's "
                               f"RoBERTa tokens) instead of words; a sentence needs that feature extractor, "
                               f"which jvmr does not ship")
        parsed = self.parse(queries)
        examples = []
        for vid, feats in videos.items():
            try:
                feats = features_lib.check_features(feats, "<array>", vid)
                sub = (None if subtitles is None or vid not in subtitles
                       else features_lib.check_features(subtitles[vid], "<subtitle array>", vid))
            except features_lib.FeatureError as e:
                raise PredictError(str(e)) from e
            self._check_video(vid, feats, sub)
            seconds = float(duration) if duration is not None else feats.shape[0] * float(clip_seconds)
            for i, (sentence, p) in enumerate(zip(queries, parsed)):
                examples.append(schema.Example(
                    qid=f"{vid}:{i}", vid=vid, duration=seconds, query=str(sentence), tokens=p.tokens,
                    dep_heads=p.heads, dep_labels=p.labels, gt_spans=np.zeros((0, 2), np.float32),
                    video_features=feats, query_type="", subtitle_features=sub))
        return self.predict_examples(examples, k, evidence)

    def predict_examples(self, examples: Sequence[schema.Example], k: int = 5,
                         evidence: bool = False) -> list[Prediction]:
        """The top ``k`` moments of prepared examples (``jvmr.data.schema.Example``, e.g. a split's, whose
        ground truth then comes along for pictures), in their order."""
        if evidence and self._explain is None:
            raise PredictError("this exported artifact has no explain function (exported by an older jvmr): "
                               "export the run again, or predict from the run's workdir")
        batch_size = min(self.batch_size, 1 << (len(examples) - 1).bit_length())  # one compile per power of two
        labelled = all(len(ex.gt_spans) for ex in examples)  # ground truth for pictures, when every one has it
        out = []
        for batch in pipeline.as_numpy(pipeline.examples_dataset(
                list(examples), self.config.dataset, batch_size=batch_size, vocab=self.vocab_list,
                inputs=self.inputs, labels=labelled)):
            outputs = (self._explain if evidence else self._forward)(self.params, pipeline.device_batch(batch))
            out.extend(batch_predictions(batch, *jax.device_get(outputs), protocol=self.protocol, k=k,
                                         vocab=self.vocab_list))
        return out


def batch_predictions(batch: Mapping[str, np.ndarray], spans: np.ndarray, scores: np.ndarray,
                      evidence: Mapping[str, Any] | None = None, *, protocol: Any, k: int,
                      vocab: Sequence[str] = ()) -> list[Prediction]:
    """The real examples of a batch as ``Prediction``s: ``predict_fn``'s candidates (spans as fractions
    [B, N, 2], scores [B, N]) in seconds, ranked by the evaluation ``protocol`` (its NMS, then top ``k``),
    with the batch's ground truth and, when given, ``evidence`` (``evidence_fn``'s, for pictures)."""
    keep = np.flatnonzero(batch["example_mask"] > 0)
    # Seconds as the training loop's evaluation computes them (float32), so that NMS decides the same.
    seconds = np.asarray(spans)[keep] * batch["duration"][keep, None, None]
    ranked_spans, ranked_scores, ranked_valid = metrics.rank_candidates(protocol, seconds, np.asarray(scores)[keep], k)
    out = []
    for row, index in enumerate(keep):
        moments = [Moment(round(float(s), 2), round(float(e), 2), float(c)) for (s, e), c, v in
                   zip(ranked_spans[row], ranked_scores[row], ranked_valid[row]) if v]
        prediction = Prediction(batch["qid"][index].decode(), batch["query"][index].decode(),
                                batch["vid"][index].decode(), round(float(batch["duration"][index]), 3), moments)
        if "gt_spans" in batch:
            prediction.ground_truth = [(float(s), float(e)) for (s, e), m in
                                       zip(batch["gt_spans"][index], batch["gt_spans_mask"][index]) if m > 0]
        if evidence is not None:
            prediction.evidence, prediction.words = visualize.example_evidence(evidence, batch, index, vocab)
        out.append(prediction)
    return out


def predict(workdir: str | None, features: str | Mapping[str, np.ndarray] | np.ndarray,
            queries: str | Sequence[str], *, duration: float | None = None, clip_seconds: float | None = None,
            k: int = 5, step: int | None = None, vids: Sequence[str] = (), feature_key: str | None = None,
            subtitles: Mapping[str, np.ndarray] | None = None, exported: str | None = None,
            evidence: bool = False) -> list[Prediction]:
    """The top ``k`` moments of ``queries`` in ``features`` with the run in ``workdir`` (or the artifact
    ``exported``); ``evidence``: see ``Predictor.predict``.

    ``features``: a path (see the module docstring), {vid: [T, D]} or one [T, D] array (video id 'video').
    The command line's ``python -m jvmr.predict`` in one call (``Predictor`` keeps the run loaded)."""
    if isinstance(queries, str):
        queries = [queries]
    if isinstance(features, (str, os.PathLike)):
        videos = read_videos(features, vids, feature_key)
    elif isinstance(features, np.ndarray):
        videos = {"video": features}
    else:
        videos = dict(features)
    predictor = Predictor(workdir, step, exported=exported)
    return predictor.predict(videos, queries, duration=duration, clip_seconds=clip_seconds, k=k, subtitles=subtitles,
                             evidence=evidence)


def write_pictures(predictions: Iterable[Prediction], directory: str) -> list[str]:
    """For each prediction made with evidence, ``<vid>_q<i>.png`` (its timeline) and, for a model with
    attention (CMIN), ``<vid>_q<i>_attention.png``; returns the paths written."""
    fs.makedirs(directory)
    paths = []
    for p in predictions:
        stem = os.path.join(directory, "".join(c if c.isalnum() or c in "-_." else "_" for c in p.vid)
                            + "_q" + p.qid.rsplit(":", 1)[-1])
        pictures = [(stem + ".png", visualize.timeline_png(p.timeline()))]
        if (p.evidence or {}).get("attention"):
            pictures.append((stem + "_attention.png", visualize.attention_png(p.timeline())))
        for path, png in pictures:
            with open(path, "wb") as f:
                f.write(png)
            paths.append(path)
    return paths


def format_table(predictions: Iterable[Prediction]) -> str:
    """A plain-text table: one line per moment, rank 1 first."""
    lines = [f"{'video':<16} {'rank':>4} {'start s':>8} {'end s':>8} {'score':>9}  query"]
    for p in predictions:
        for rank, m in enumerate(p.moments, 1):
            lines.append(f"{p.vid[:16]:<16} {rank:>4} {m.start:>8.2f} {m.end:>8.2f} {m.score:>9.3f}  {p.query}")
        if not p.moments:
            lines.append(f"{p.vid[:16]:<16} {'-':>4} {'':>8} {'':>8} {'':>9}  {p.query} (no valid span)")
    return "\n".join(lines)


def main(argv):
    del argv
    queries = list(FLAGS.query)
    if FLAGS.query_file:
        with open(FLAGS.query_file, encoding="utf-8") as f:
            queries += [line.strip() for line in f if line.strip()]
    if not (FLAGS.workdir or FLAGS.exported) or not FLAGS.features or not queries:
        raise app.UsageError("give --workdir (a trained run) or --exported (an artifact of jvmr.export), --features "
                             "and --query (or --query_file)")
    try:
        key = FLAGS.feature_key or None
        subtitles = read_videos(FLAGS.subtitles, FLAGS.vid, key) if FLAGS.subtitles else None
        predictions = predict(FLAGS.workdir or None, FLAGS.features, queries, exported=FLAGS.exported or None,
                              duration=FLAGS.duration or None, clip_seconds=FLAGS.clip_seconds or None, k=FLAGS.k,
                              step=None if FLAGS.step < 0 else FLAGS.step, vids=FLAGS.vid,
                              feature_key=key, subtitles=subtitles, evidence=bool(FLAGS.pictures))
    except (ValueError, FileNotFoundError) as e:  # PredictError, and an artifact of another version
        sys.exit(f"error: {e}")
    print(format_table(predictions))
    if FLAGS.pictures:
        paths = write_pictures(predictions, FLAGS.pictures)
        print(f"{len(paths)} pictures in {FLAGS.pictures}")
    if FLAGS.output:
        fs.write_text_atomic(FLAGS.output, "".join(json.dumps(p.to_json()) + "\n" for p in predictions))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "", "A trained run (jvmr.main's --workdir).")
    flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the latest).")
    flags.DEFINE_string("exported", "", "An artifact of python -m jvmr.export, instead of --workdir.")
    flags.DEFINE_string("features", "", "A <vid>.npy file, a folder of them, or an HDF5 file / folder.")
    flags.DEFINE_multi_string("vid", [], "Videos of a folder or HDF5 file to use (default: all).")
    flags.DEFINE_string("feature_key", "", "The array's name inside each HDF5 group.")
    flags.DEFINE_string("subtitles", "", "Subtitle-stream features, for models that read them (same layout).")
    flags.DEFINE_multi_string("query", [], "A sentence (repeat for several).")
    flags.DEFINE_string("query_file", "", "A text file with one sentence per line.")
    flags.DEFINE_float("duration", 0.0, "Video duration in seconds (or give --clip_seconds).")
    flags.DEFINE_float("clip_seconds", 0.0, "Seconds per feature row: duration = rows x clip_seconds.")
    flags.DEFINE_integer("k", 5, "Moments per query.")
    flags.DEFINE_string("output", "", "Also write moment_detr JSONL rows here.")
    flags.DEFINE_string("pictures", "", "Also draw each query's timeline (and CMIN's attention) as PNGs here.")
    app.run(main)
