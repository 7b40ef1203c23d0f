r"""An HTML report of a run's evaluation: what the numbers are and what the model does.

    python -m jvmr.report --workdir=/tmp/cmin [--step=N] [--split=val] [--num_examples=3]

writes ``report_step{N}.html`` into the workdir, one self-contained file (pictures inlined) of the
evaluation at step N (default: the latest evaluation whose checkpoint is kept), for every evaluated
split (or ``--split``):

* the metrics the run logged (``eval_metrics.jsonl``) and the same metrics per query type,
  re-scored from the written predictions under the run's protocol (``jvmr.metrics.evaluate_windows``);
* the headline metric at every evaluation of the run;
* R@1 against the IoU threshold (the share of queries whose top moment overlaps the ground truth
  by at least that much; a corpus run also draws its VCMR top moment, which must be in the right video);
* the histogram of top-1 scores, hits (IoU >= 0.5) and misses apart;
* the best and the worst queries (top-1 IoU; among the worst, the most confident first), each with
  its timeline (``jvmr.visualize``: ground truth, top-5 moments, the model's per-clip evidence) and,
  for CMIN, its video-to-word attention.

The per-query outcomes come from the files the run wrote (``predictions/{split}_step{N}.jsonl``, or
the TVR submission of a corpus run: its SVMR block, the query's own video) and the split's ground
truth and query types from the run's data; the timelines come from running the checkpoint of step N
on the chosen queries (``jvmr.predict.Predictor``). ``write_report(...)`` is the same from Python.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import html
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
from absl import app, flags

from jvmr import fs, metrics, search, visualize

FLAGS = flags.FLAGS

HIT_IOU = 0.5


@dataclasses.dataclass
class Outcome:
    """What the run predicted for one query (seconds), beside its ground truth."""
    qid: str
    vid: str
    query: str
    query_type: str
    duration: float
    ground_truth: list[tuple[float, float]]
    windows: list[tuple[float, float, float]]  # ranked (start, end, score) in the query's own video
    top_iou: float  # best IoU of the top window with a ground-truth span (0 without a window)
    corpus_top_iou: float | None = None  # a corpus run's VCMR top moment (0 in another video)


def _read_json_lines(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {number}: not JSON ({e})") from e
    return rows


def _predicted_windows(directory: str, split: str, step: int) -> tuple[dict[str, list], dict[str, list] | None]:
    """qid -> ranked windows in the query's video, and for a corpus run qid -> VCMR rows (vid, st, ed, score)."""
    moment_path = os.path.join(directory, f"{split}_step{step}.jsonl")
    corpus_path = os.path.join(directory, f"{split}_step{step}_tvr.json")
    if os.path.exists(moment_path):
        rows = _read_json_lines(moment_path)
        return {str(r["qid"]): [tuple(w) for w in r["pred_relevant_windows"]] for r in rows}, None
    if os.path.exists(corpus_path):
        with open(corpus_path, encoding="utf-8") as f:
            submission = json.load(f)
        idx2vid = {i: v for v, i in submission["video2idx"].items()}
        svmr = {str(e["desc_id"]): [tuple(p[1:]) for p in e["predictions"]] for e in submission.get("SVMR", [])}
        vcmr = {str(e["desc_id"]): [(idx2vid[p[0]], *p[1:]) for p in e["predictions"]]
                for e in submission.get("VCMR", [])}
        return svmr, vcmr
    raise FileNotFoundError(f"no predictions of split {split!r} at step {step}: neither {moment_path} nor "
                            f"{corpus_path} (was the run trained with eval.write_predictions=False?)")


def split_outcomes(run_dir: str, data_dir: str, split: str, step: int) -> list[Outcome]:
    """Every query of ``split`` with ground truth, and what the run's evaluation at ``step`` predicted."""
    from jvmr.data import schema
    windows, corpus = _predicted_windows(os.path.join(run_dir, "predictions"), split, step)
    out = []
    for ex in schema.read_split(data_dir, split):
        gt = [(float(s), float(e)) for s, e in np.asarray(ex.gt_spans).reshape(-1, 2)]
        if not gt:
            continue
        key = str(int(ex.qid)) if corpus is not None and ex.qid.isdigit() else ex.qid  # TVR desc_ids are ints
        if key not in windows:
            raise ValueError(f"{run_dir}: the predictions of {split!r} at step {step} have no row for query "
                             f"{ex.qid!r}; they do not belong to this run's data")
        mine = windows[key]
        outcome = Outcome(ex.qid, ex.vid, ex.query, ex.query_type or "", float(ex.duration), gt, mine,
                          visualize.best_iou(mine[0], gt) if mine else 0.0)
        if corpus is not None:
            top = corpus.get(key, [])
            outcome.corpus_top_iou = visualize.best_iou(top[0][1:3], gt) if top and top[0][0] == ex.vid else 0.0
        out.append(outcome)
    return out


def metrics_by_type(protocol: str, outcomes: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """The protocol's flat metrics of each query type's queries (and 'all'), from the written windows."""
    groups: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        groups[o.query_type or "untyped"].append(o)
    table = {}
    for name, group in [("all", list(outcomes))] + sorted(groups.items()):
        result = metrics.evaluate_windows(protocol, [[list(w) for w in o.windows] for o in group],
                                          [[list(g) for g in o.ground_truth] for o in group])
        flat = metrics.flat_metrics(result)
        table[name] = {"queries": len(group), **{k: v for k, v in flat.items() if "/" not in k}}
    return table


def pick_examples(outcomes: Sequence[Outcome], n: int) -> tuple[list[Outcome], list[Outcome]]:
    """The ``n`` best queries (highest top-1 IoU, then score) and the ``n`` worst (lowest IoU, the most
    confident first), never the same query twice."""
    def score(o: Outcome) -> float:
        return o.windows[0][2] if o.windows else -np.inf
    best = sorted(outcomes, key=lambda o: (-o.top_iou, -score(o)))[:n]
    chosen = {o.qid for o in best}
    worst = [o for o in sorted(outcomes, key=lambda o: (o.top_iou, -score(o))) if o.qid not in chosen][:n]
    return best, worst


# ----------------------------------------------------------------------------- figures


def recall_curve_png(outcomes: dict[str, Sequence[Outcome]]) -> bytes:
    """R@1 (%) against the IoU threshold, one line per split (dashed: a corpus run's VCMR)."""
    thresholds = np.linspace(0.0, 1.0, 101)
    fig = visualize.figure(3.6, 6.5)
    ax = fig.subplots()
    for split, group in outcomes.items():
        ious = np.asarray([o.top_iou for o in group])
        line, = ax.plot(thresholds, [100.0 * np.mean(ious >= t) for t in thresholds], label=f"{split}")
        if group and group[0].corpus_top_iou is not None:
            corpus = np.asarray([o.corpus_top_iou for o in group])
            ax.plot(thresholds, [100.0 * np.mean(corpus >= t) for t in thresholds], ls="--", color=line.get_color(),
                    label=f"{split} (VCMR: right video too)")
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("R@1 (%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return visualize.png(fig)


def score_histogram_png(outcomes: dict[str, Sequence[Outcome]]) -> bytes:
    """Each split's top-1 scores, hits (top-1 IoU >= 0.5) and misses stacked."""
    fig = visualize.figure(2.4 * len(outcomes), 6.5)
    axes = fig.subplots(len(outcomes), 1, squeeze=False)[:, 0]
    for ax, (split, group) in zip(axes, outcomes.items()):
        scored = [o for o in group if o.windows]
        hits = [o.windows[0][2] for o in scored if o.top_iou >= HIT_IOU]
        misses = [o.windows[0][2] for o in scored if o.top_iou < HIT_IOU]
        ax.hist([hits, misses], bins=30, stacked=True, color=[visualize.GROUND_TRUTH_COLOR, "#d62728"],
                label=[f"top-1 IoU >= {HIT_IOU} ({len(hits)})", f"IoU < {HIT_IOU} ({len(misses)})"])
        ax.set_title(split, fontsize=9)
        ax.set_ylabel("queries")
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("top-1 score")
    return visualize.png(fig)


# ----------------------------------------------------------------------------- HTML

STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th:first-child,td:first-child{text-align:left}figure{margin:1.5em 0}img{max-width:100%}
figcaption{font-size:.9em;margin-bottom:.4em}.query{font-weight:600}code{font-size:.9em}"""


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _number(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float) and np.isnan(value):
        return "n/a"
    return f"{float(value):.2f}" if isinstance(value, (float, np.floating)) else html.escape(str(value))


def _table(rows: dict[str, dict[str, Any]], first: str) -> str:
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [first] + columns)
    body = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(
        f"<td>{_number(row[c]) if c in row else ''}</td>" for c in columns) + "</tr>" for name, row in rows.items())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _example_html(split: str, label: str, o: Outcome, prediction: Any) -> str:
    title = f"{split} · {label} · {o.qid}"
    top = (f"top moment {o.windows[0][0]:.2f}–{o.windows[0][1]:.2f} s (score {o.windows[0][2]:.3g}), IoU "
           f"{o.top_iou:.2f}" if o.windows else "no moment predicted")
    gt = ", ".join(f"{s:.2f}–{e:.2f} s" for s, e in o.ground_truth)
    parts = [f'<figure id="{html.escape(split)}-{html.escape(o.qid)}"><figcaption><span class="query">'
             f'{html.escape(o.query)}</span><br>video <code>{html.escape(o.vid)}</code> ({o.duration:.1f} s), query '
             f'<code>{html.escape(o.qid)}</code>{" [" + html.escape(o.query_type) + "]" if o.query_type else ""}; '
             f'ground truth {html.escape(gt)}; {html.escape(top)}</figcaption>',
             _image(visualize.timeline_png(prediction.timeline(title)), f"timeline of {o.query}")]
    if (prediction.evidence or {}).get("attention"):
        parts.append(_image(visualize.attention_png(prediction.timeline(title)), f"attention of {o.query}"))
    return "".join(parts) + "</figure>"


def evaluation_steps(workdir: str) -> dict[int, dict[str, dict[str, Any]]]:
    """step -> split -> the row the run logged (``eval_metrics.jsonl``)."""
    path = os.path.join(workdir, "eval_metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no evaluation logged in this workdir (is it a jvmr.main run?)")
    steps: dict[int, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
    for row in _read_json_lines(path):
        steps[int(row["step"])][row["split"]] = row
    return dict(steps)


def write_report(workdir: str, step: int | None = None, splits: Sequence[str] = (), num_examples: int = 3,
                 output: str | None = None) -> str:
    """Writes the report (default ``{workdir}/report_step{N}.html``) and returns its path."""
    import orbax.checkpoint as ocp
    from jvmr import predict
    config = search.load_config(workdir)
    logged = evaluation_steps(workdir)
    kept = set(ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints")).all_steps())
    if step is None:
        usable = sorted(set(logged) & kept)
        if not usable:
            raise FileNotFoundError(f"{workdir}: no evaluation step has a kept checkpoint (evaluated: "
                                    f"{sorted(logged)}, checkpoints: {sorted(kept)})")
        step = usable[-1]
    if step not in logged:
        raise ValueError(f"{workdir}: no evaluation at step {step} (evaluated: {sorted(logged)})")
    splits = list(splits) or list(logged[step])
    missing = [s for s in splits if s not in logged[step]]
    if missing:
        raise ValueError(f"{workdir}: split(s) {missing} were not evaluated at step {step} "
                         f"(evaluated: {sorted(logged[step])})")
    data_dir = config.dataset.data_dir or os.path.join(workdir, "data")
    protocol = logged[step][splits[0]].get("protocol") or config.dataset.protocol or "jvmr"
    outcomes = {s: split_outcomes(workdir, data_dir, s, step) for s in splits}

    predictor = predict.Predictor(workdir, step) if num_examples > 0 else None
    name = config.model.name
    sections = [f"<h1>jvmr report: {html.escape(name)} on {html.escape(str(config.dataset.name))}, step {step}</h1>",
                f"<p>Run <code>{html.escape(os.path.abspath(workdir))}</code>; protocol <code>{html.escape(protocol)}"
                f"</code>; written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
                "<h2>Metrics</h2>"]
    for split in splits:
        row = {k: v for k, v in logged[step][split].items() if k not in ("step", "split", "protocol")}
        sections.append(f"<h3>{html.escape(split)}: {len(outcomes[split])} queries</h3>")
        sections.append(_table({"logged": {k: v for k, v in row.items() if "/" not in k}}, "metric"))
        sections.append(f"<h4>{html.escape(split)} by query type</h4>")
        sections.append(_table(metrics_by_type(protocol, outcomes[split]), "query type"))
    key = metrics.primary_metric_key(protocol) if protocol != "tvr" else "VCMR-0.5-r1"
    history = {str(s): {split: rows[split].get(key, float("nan")) for split in splits if split in rows}
               for s, rows in sorted(logged.items())}
    sections += [f"<h2>{html.escape(key)} during training</h2>", _table(history, "step"),
                 "<h2>R@1 against the IoU threshold</h2>", _image(recall_curve_png(outcomes), "R@1 against IoU"),
                 "<h2>Top-1 scores</h2>", _image(score_histogram_png(outcomes), "score histogram")]
    if predictor is not None:
        sections.append("<h2>Best and worst queries</h2>")
        from jvmr.data import schema
        for split in splits:
            best, worst = pick_examples(outcomes[split], num_examples)
            wanted = {o.qid for o in best + worst}
            examples = {ex.qid: ex for ex in schema.read_split(data_dir, split) if ex.qid in wanted}
            chosen = [(label, o) for label, group in (("best", best), ("worst", worst)) for o in group]
            predictions = predictor.predict_examples([examples[o.qid] for _, o in chosen], k=5, evidence=True)
            for (label, o), p in zip(chosen, predictions):
                sections.append(_example_html(split, label, o, p))
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>jvmr report: {html.escape(name)} '
            f"step {step}</title><style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n")
    output = output or os.path.join(workdir, f"report_step{step}.html")
    fs.write_text_atomic(output, page)
    return output


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("give --workdir (a trained run)")
    try:
        path = write_report(FLAGS.workdir, None if FLAGS.step < 0 else FLAGS.step, FLAGS.split, FLAGS.num_examples,
                            FLAGS.output or None)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(path)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "", "A trained run (jvmr.main's --workdir).")
    flags.DEFINE_integer("step", -1, "The evaluation to report (-1: the latest with a kept checkpoint).")
    flags.DEFINE_multi_string("split", [], "Splits to report (default: every evaluated one).")
    flags.DEFINE_integer("num_examples", 3, "Best and worst queries drawn per split (0: no timelines).")
    flags.DEFINE_string("output", "", "The HTML file (default: WORKDIR/report_stepN.html).")
    app.run(main)
