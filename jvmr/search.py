r"""Search a video corpus for a sentence with a trained corpus model (ReLoCLNet).

Build an index of a split's videos (every video encoded once, from the run's latest checkpoint; for a
query-only split such as TVR's test_public, the videos of its corpus):
    python -m jvmr.search --workdir=/tmp/reloclnet --split=test --build_index=/tmp/reloclnet_index
Query it:
    python -m jvmr.search --index=/tmp/reloclnet_index --query="someone talks about the wedding" --k=10

The query is tokenised as the data was (spaCy through ``jvmr.data.parsing`` when
the data was parsed with it, else lower-cased words) and embedded with the run's
vocabulary and weights. An index is tied to the run, checkpoint step and
vocabulary that built it: searching it with anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from jvmr import registry, retrieval, train
from jvmr.data import parsing, pipeline, text

FLAGS = flags.FLAGS


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config of a run (``WORKDIR/config.json``)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a jvmr run")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, step: int | None = None) -> dict[str, Any]:
    """A trained run: its resolved config, model, parameters (latest or ``step``), vocabulary, data dir."""
    import orbax.checkpoint as ocp
    config = load_config(workdir)
    data_dir = config.dataset.data_dir or os.path.join(workdir, "data")
    vocab = pipeline.load_vocabulary(data_dir)
    manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"))
    available = manager.all_steps()
    step = manager.latest_step() if step is None else step
    if step is None or step not in available:
        raise FileNotFoundError(f"no checkpoint at step {step} in {workdir} (steps: {sorted(available)})")
    params = manager.restore(step, args=ocp.args.StandardRestore())["params"]
    model = registry.create_model(config.model, vocab_size=len(vocab))
    return {"config": config, "model": model, "params": params, "vocab": vocab, "data_dir": data_dir,
            "step": int(step), "workdir": os.path.abspath(workdir),
            "vocab_sha256": _sha256(os.path.join(data_dir, "vocab.txt"))}


def data_parser(data_dir: str) -> str:
    """How a built dataset's queries were tokenised (``manifest.json``): 'spacy', 'none', 'gold' (the embedded
    benchmark's grammar trees) or '' when it does not say."""
    manifest = train.read_manifest(data_dir)
    parser = manifest.get("parser", {})
    if isinstance(parser, dict):
        parser = parser.get("name", "")
    return parser or manifest.get("config", {}).get("synthetic", manifest.get("config", {})).get("parser", "")


def is_query_only(data_dir: str, split: str) -> bool:
    """Whether ``split`` of the data was released without ground truth (a query set plus a corpus,
    ``manifest.json``'s ``query_only_splits``, e.g. TVR test_public)."""
    return split in train.read_manifest(data_dir).get("query_only_splits", ())


def split_batches(run: dict[str, Any], split: str, kind: str = "example"):
    """The evaluation batches of ``split``'s records of ``kind`` (``jvmr.data.schema.KINDS``), built by the
    training pipeline with the run's config, vocabulary and model inputs."""
    config = run["config"]
    spec = registry.get_model_spec(config.model.name)
    return pipeline.as_numpy(pipeline.make_dataset(
        run["data_dir"], split, config.dataset, batch_size=config.eval.batch_size, training=False,
        vocab=run["vocab"], inputs=spec.inputs(config.model), kind=kind))


def encoder(run: dict[str, Any], method: str):
    """batch -> the run's ``model.<method>`` outputs (jitted, with its parameters)."""
    model = run["model"]
    if not hasattr(model, method):
        raise ValueError(f"model {run['config'].model.name!r} has no {method}: it is not a corpus model")
    fn = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False, method=getattr(model, method)))
    return lambda batch: fn(run["params"], pipeline.device_batch(batch))


def index_info(run: dict[str, Any], split: str) -> dict[str, Any]:
    """What an index of ``split`` built by ``run`` records (checked by ``Engine``)."""
    config = run["config"]
    return {"workdir": run["workdir"], "step": run["step"], "model": config.model.to_dict(),
            "vocab_sha256": run["vocab_sha256"], "split": split, "dataset": config.dataset.name}


def corpus_index(run: dict[str, Any], split: str, directory: str | None = None) -> retrieval.CorpusIndex:
    """Every video of ``split`` encoded once (a query-only split: its corpus records); with ``directory``,
    written there as it is built (``retrieval.build_index``: the corpus need not fit in memory)."""
    kind = "video" if is_query_only(run["data_dir"], split) else "example"
    return retrieval.build_index(encoder(run, "encode_context"), split_batches(run, split, kind),
                                 index_info(run, split), directory=directory)


def build_index(workdir: str, split: str, output: str) -> retrieval.CorpusIndex:
    """Encodes every video of ``split`` with the run's latest checkpoint into ``output`` (streamed to disk)."""
    return corpus_index(load_run(workdir), split, directory=output)


class Engine:
    """Loads an index and the run that built it; answers free-text queries."""

    def __init__(self, index_dir: str, settings: retrieval.SearchSettings | None = None,
                 ann: retrieval.AnnSettings | None = None, out_of_core: bool = False):
        self.index = retrieval.CorpusIndex.load(index_dir)
        info = self.index.info
        try:
            self.run = load_run(info["workdir"], info["step"])
        except (FileNotFoundError, KeyError) as e:
            raise ValueError(f"index {index_dir} was built by run {info.get('workdir')!r} at step "
                             f"{info.get('step')}, which cannot be loaded: {e}") from e
        config = self.run["config"]
        if self.run["vocab_sha256"] != info["vocab_sha256"] or config.model.to_dict() != info["model"]:
            raise ValueError(f"index {index_dir} was built with another model or vocabulary than "
                             f"{info['workdir']} has now: rebuild it with --build_index")
        if config.model.get("use_query_features", False):
            raise ValueError("this model reads pre-extracted query token features (e.g. TVR's RoBERTa): "
                             "free-text search needs the feature extractor, which jvmr does not ship")
        model, params = self.run["model"], self.run["params"]
        self._encode = jax.jit(lambda b: model.apply({"params": params}, b, train=False, method=model.encode_query))
        defaults = retrieval.SearchSettings()
        self.searcher = retrieval.CorpusSearcher(
            self.index, np.asarray(params["conv_start"]), np.asarray(params["conv_end"]),
            settings or retrieval.SearchSettings(
                num_videos=min(defaults.num_videos, self.index.num_videos), min_len=int(config.model.min_span_len),
                max_len=int(config.model.max_span_len)), ann=ann,
            layout_dir=os.path.join(index_dir, "layout") if out_of_core else None)
        self.parser = parsing.QueryParser(data_parser(self.run["data_dir"]), needs_tree=False)

    def tokenize(self, sentence: str) -> list[str]:
        if not sentence.strip():
            raise ValueError("empty query")
        return self.parser([sentence])[0].tokens

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        vocab = {w: i for i, w in enumerate(self.run["vocab"])}
        length = int(self.run["config"].dataset.max_query_len)
        tokens = np.zeros((len(texts), length), np.int32)
        mask = np.zeros((len(texts), length), np.float32)
        for row, sentence in enumerate(texts):
            ids = [vocab.get(w, text.UNK_ID) for w in self.tokenize(sentence)][:length]
            tokens[row, :len(ids)], mask[row, :len(ids)] = ids, 1.0
        return jax.device_get(self._encode({"query_tokens": tokens, "query_mask": mask}))

    def search(self, sentence: str, k: int = 10) -> list[dict[str, Any]]:
        """The top ``k`` moments of the corpus for ``sentence``: video id, start / end seconds, score."""
        enc = self.encode([sentence])
        found = self.searcher.search(enc["query"], enc["local_query"])
        out = []
        for v, (s, e), c in zip(found["moment_videos"][0], found["moment_spans"][0], found["moment_scores"][0]):
            if np.isfinite(c) and len(out) < k:
                out.append({"vid": self.index.vids[int(v)], "start": round(float(s), 2), "end": round(float(e), 2),
                            "score": float(c)})
        return out


def main(argv):
    del argv
    if FLAGS.build_index:
        if not FLAGS.workdir:
            raise app.UsageError("--build_index needs --workdir (a trained run)")
        index = build_index(FLAGS.workdir, FLAGS.split, FLAGS.build_index)
        print(json.dumps({"index": FLAGS.build_index, "num_videos": index.num_videos, "num_clips": index.num_clips}))
        return
    if not FLAGS.index or not FLAGS.query:
        raise app.UsageError("give --index and --query (or --workdir and --build_index to build one)")
    ann = retrieval.AnnSettings(nprobe=FLAGS.ann_nprobe) if FLAGS.ann else None
    for row in Engine(FLAGS.index, ann=ann, out_of_core=FLAGS.out_of_core).search(FLAGS.query, FLAGS.k):
        print(json.dumps(row))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "", "A trained run (to build an index).")
    flags.DEFINE_string("split", "test", "The split whose videos are indexed.")
    flags.DEFINE_string("build_index", "", "Write the index of --split's videos here.")
    flags.DEFINE_string("index", "", "An index built by --build_index.")
    flags.DEFINE_string("query", "", "The sentence to search for.")
    flags.DEFINE_integer("k", 10, "Moments to print.")
    flags.DEFINE_bool("ann", False, "Approximate video retrieval (faiss candidates re-scored exactly).")
    flags.DEFINE_integer("ann_nprobe", retrieval.AnnSettings.nprobe, "Inverted lists probed per stream with --ann.")
    flags.DEFINE_bool("out_of_core", False, "Keep the search layout on disk (INDEX/layout, memory-mapped) instead "
                      "of in memory: for a corpus larger than memory.")
    app.run(main)
