"""python -m jvmr.report: the HTML report of a tiny trained run (parsed: well-formed, the logged numbers, the
right queries, decodable pictures), and the example timelines a run draws into TensorBoard."""

import base64
import html.parser
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import test as test_config
from jvmr import report, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _train(name, workdir, **eval_options):
    config = test_config.get_config(name)
    config.dataset.eval_splits = ("val",)
    config.eval.update(eval_options)
    train.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def cmin_run(tmp_path_factory):
    return _train("cmin", str(tmp_path_factory.mktemp("cmin")), num_timelines=2)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    return _train("reloclnet", str(tmp_path_factory.mktemp("reloclnet")))


class Page(html.parser.HTMLParser):
    """The parts of a report a reader sees, checking that every element is closed in order."""

    def __init__(self, text):
        super().__init__()
        self.stack, self.title, self.images, self.figures, self.tables, self.headings = [], "", [], {}, [], []
        self._figure = None
        self._text = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed elements: {self.stack}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
            self.images.append(base64.b64decode(attrs["src"].split(",", 1)[1]))
        if tag == "figure":
            self._figure = attrs["id"]
            self.figures[self._figure] = ""
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th", "title", "h1", "h2", "h3", "h4", "figcaption"):
            self._text = []

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        text = "".join(self._text).strip()
        if tag in ("td", "th"):
            self.tables[-1][-1].append(text)
        elif tag == "title":
            self.title = text
        elif tag in ("h1", "h2", "h3", "h4"):
            self.headings.append(text)
        elif tag == "figcaption":
            self.figures[self._figure] = text

    def handle_data(self, data):
        self._text.append(data)


def _table(rows):
    """{first cell: {column: cell}} of a parsed table."""
    head = rows[0]
    return {r[0]: dict(zip(head[1:], r[1:])) for r in rows[1:]}


def _png(data):
    Image.open(io.BytesIO(data)).verify()
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert image.shape[0] > 100 and image.shape[1] > 300 and image.reshape(-1, 3).std(0).max() > 10
    return image


def _logged(workdir, step):
    with open(os.path.join(workdir, "eval_metrics.jsonl")) as f:
        return next(r for r in map(json.loads, f) if r["step"] == step and r["split"] == "val")


def test_the_report_shows_the_logged_metrics_the_chosen_queries_and_their_pictures(cmin_run):
    path = report.write_report(cmin_run, num_examples=2)
    assert path == os.path.join(cmin_run, "report_step6.html")
    with open(path, encoding="utf-8") as f:
        page = Page(f.read())
    assert page.title == "jvmr report: cmin step 6"
    logged = _logged(cmin_run, 6)
    metrics_table, by_type = _table(page.tables[0]), _table(page.tables[1])
    headline = {k: v for k, v in logged.items() if k not in ("step", "split", "protocol") and "/" not in k}
    assert {k: float(v) for k, v in metrics_table["logged"].items()} == pytest.approx(
        {k: round(v, 2) for k, v in headline.items()}, abs=0.006)
    # Re-scored from the written predictions, all the queries give the logged numbers back...
    assert {k: float(by_type["all"][k]) for k in headline} == pytest.approx(headline, abs=0.006)
    # ... and each type's headline is the one the run logged for it.
    outcomes = report.split_outcomes(cmin_run, os.path.join(cmin_run, "data"), "val", 6)
    types = sorted({o.query_type for o in outcomes})
    assert set(by_type) == {"all", *types} and len(types) > 1
    assert sum(int(by_type[t]["queries"]) for t in types) == len(outcomes) == int(by_type["all"]["queries"])
    for t in types:
        assert float(by_type[t]["R@1,IoU=0.5"]) == pytest.approx(logged[f"{t}/R@1,IoU=0.5"], abs=0.006)
    # The best and worst queries, each drawn (timeline + CMIN's attention), named by id and sentence.
    best, worst = report.pick_examples(outcomes, 2)
    assert len(best) == len(worst) == 2 and not {o.qid for o in best} & {o.qid for o in worst}
    assert max(o.top_iou for o in worst) <= min(o.top_iou for o in best)
    assert list(page.figures) == [f"val-{o.qid}" for o in best + worst]
    for o in best + worst:
        caption = page.figures[f"val-{o.qid}"]
        assert o.query in caption and o.vid in caption and f"IoU {o.top_iou:.2f}" in caption
    assert len(page.images) == 2 + 2 * 4  # curve, histogram; a timeline and an attention map per query
    for image in page.images:
        _png(image)
    assert "R@1,IoU=0.5 during training" in page.headings
    assert list(_table(page.tables[2])) == ["3", "6"]  # every evaluation of the run


def test_an_older_evaluation_and_bad_requests(cmin_run, tmp_path):
    path = report.write_report(cmin_run, step=3, num_examples=0, output=str(tmp_path / "r.html"))
    with open(path, encoding="utf-8") as f:
        page = Page(f.read())
    assert page.title == "jvmr report: cmin step 3" and len(page.images) == 2 and not page.figures
    with pytest.raises(ValueError, match=r"no evaluation at step 4 \(evaluated: \[3, 6\]\)"):
        report.write_report(cmin_run, step=4)
    with pytest.raises(ValueError, match=r"split\(s\) \['test'\] were not evaluated at step 6"):
        report.write_report(cmin_run, splits=["test"])
    with pytest.raises(FileNotFoundError, match="is not a jvmr run"):
        report.write_report(str(tmp_path))
    unevaluated = tmp_path / "unevaluated"
    unevaluated.mkdir()
    (unevaluated / "config.json").write_text(open(os.path.join(cmin_run, "config.json")).read())
    with pytest.raises(FileNotFoundError, match="eval_metrics.jsonl: no evaluation logged"):
        report.write_report(str(unevaluated))


def test_a_corpus_run_is_reported_with_its_svmr_moments_and_vcmr_curve(corpus_run):
    result = subprocess.run([sys.executable, "-m", "jvmr.report", f"--workdir={corpus_run}", "--num_examples=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    path = result.stdout.strip().splitlines()[-1]
    with open(path, encoding="utf-8") as f:
        page = Page(f.read())
    logged = _logged(corpus_run, 6)
    by_type = _table(page.tables[1])
    assert set(by_type) == {"all", "t", "v", "vt"}
    for key in ("SVMR-0.5-r1", "SVMR-0.7-r5"):
        assert float(by_type["all"][key]) == pytest.approx(logged[key], abs=0.006)
    assert "VCMR-0.5-r1 during training" in page.headings
    assert len(page.figures) == 2 and len(page.images) == 2 + 2  # no attention map for ReLoCLNet
    for image in page.images:
        _png(image)


def test_each_evaluation_draws_example_timelines_into_tensorboard(cmin_run):
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator
    events = event_accumulator.EventAccumulator(os.path.join(cmin_run, "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = [t for t in events.Tags()["tensors"] if t.startswith("timelines/")]
    assert sorted(tags) == ["timelines/val/0", "timelines/val/1"]
    for tag in tags:
        steps = events.Tensors(tag)
        assert [e.step for e in steps] == [3, 6]
        width, height, png = tf.make_ndarray(steps[-1].tensor_proto)  # tf.summary.image: [w, h, encoded]
        image = _png(png)
        assert image.shape[:2] == (int(height), int(width))
