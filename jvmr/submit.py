r"""Write a TVR leaderboard submission of a split with a trained corpus model (ReLoCLNet).

    python -m jvmr.submit --workdir=RUN --split=test_public --output=submission.json

Every video of the split's corpus is encoded once with the run's checkpoint (for
a query-only split such as TVR's ``test_public``: the corpus records ``data_prep``
wrote from ``tvr_video2dur_idx.json``), and every query of the split, read from
the data by the training pipeline (the same vocabulary, tokens and query token
features), is searched against all of it (``jvmr.retrieval``). The JSON holds
``video2idx``, ``VCMR`` and ``VR``: ranked rows ``[video_idx, start, end, score]``,
at most 100 per query. For a labelled split (e.g. ``val``) it also holds ``SVMR``
(each query's own video), and the split's metrics are printed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
from absl import app, flags

from jvmr import registry, retrieval, search, train
from jvmr.data import schema

FLAGS = flags.FLAGS


def make_submission(workdir: str, split: str, step: int | None = None, search_batch: int = 1024,
                    ann: retrieval.AnnSettings | None = None) -> tuple[dict[str, Any], dict[str, float] | None]:
    """The TVR submission of ``split`` by the run in ``workdir`` (latest checkpoint, or ``step``);
    exact search, or approximate VR with ``ann``.

    Returns (submission, metrics); metrics (``VCMR-0.5-r1``, ...) only for a labelled split.
    Raises ValueError when the run's model is not a corpus model.
    """
    name = search.load_config(workdir).model.name
    module = registry.get_model_spec(name).module
    if not (hasattr(module, "encode_query") and hasattr(module, "encode_context")):
        raise ValueError(f"{workdir}: model {name!r} is not a corpus model (it has no separate query and video "
                         f"encoders, so it cannot search a corpus): a TVR submission needs one, e.g. reloclnet")
    run = search.load_run(workdir, step)
    settings = train.search_settings(run["config"])
    encode_query = search.encoder(run, "encode_query")
    if not search.is_query_only(run["data_dir"], split):
        metrics, predictions = retrieval.evaluate_corpus(
            encode_query, search.encoder(run, "encode_context"), run["params"], search.split_batches(run, split),
            settings, search.index_info(run, split), search_batch=search_batch, ann=ann)
        return predictions["submission"], metrics
    index = search.corpus_index(run, split)
    enc = retrieval.encode_queries(encode_query, search.split_batches(run, split, "query"),
                                   source=f"split {split!r} of {run['data_dir']}")
    searcher = retrieval.CorpusSearcher(index, np.asarray(run["params"]["conv_start"]),
                                        np.asarray(run["params"]["conv_end"]), settings, ann=ann)
    merged = retrieval.search_all(searcher, enc["query"], enc["local_query"], search_batch)
    return retrieval.tvr_submission(index, enc["qid"], enc["query_text"], merged), None


def main(argv):
    del argv
    if not FLAGS.workdir or not FLAGS.output:
        raise app.UsageError("give --workdir (a trained run) and --output (the submission JSON)")
    try:
        ann = retrieval.AnnSettings(nprobe=FLAGS.ann_nprobe) if FLAGS.ann else None
        submission, metrics = make_submission(FLAGS.workdir, FLAGS.split, None if FLAGS.step < 0 else FLAGS.step,
                                              ann=ann)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    schema.write_text_atomic(FLAGS.output, json.dumps(submission))
    summary = {"output": FLAGS.output, "split": FLAGS.split, "num_queries": len(submission["VCMR"]),
               "num_videos": len(submission["video2idx"]),
               "tasks": [t for t in ("VCMR", "SVMR", "VR") if t in submission]}
    if metrics is not None:
        summary["metrics"] = {k: round(float(v), 4) for k, v in metrics.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "", "A trained run of a corpus model (jvmr.main's --workdir).")
    flags.DEFINE_string("split", "test_public", "The split to submit: a query-only split (TVR test_public) or a "
                        "labelled one (val: SVMR included and metrics printed).")
    flags.DEFINE_string("output", "", "The submission JSON to write.")
    flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the latest).")
    flags.DEFINE_bool("ann", False, "Approximate video retrieval (faiss candidates re-scored exactly).")
    flags.DEFINE_integer("ann_nprobe", retrieval.AnnSettings.nprobe, "Inverted lists probed per stream with --ann.")
    app.run(main)
