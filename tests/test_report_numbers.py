"""`alignkit report` shows every number the evaluations wrote: nested results (``alignkit eval metrics``' KL,
reward-model scores, win rate and safety; ``eval safety``, ``judge eval``, ``eval rank``, ``eval human``) flattened
to labelled rows, intervals as ``0.731 [0.644, 0.812] (n=48)``, win-rate rows labelled by run and judge, plots at
least 300 px tall with nothing clipped at 0 or 1, and never ``nan``.

The eval files are built with the project's own functions where they need no model (``kl_summary``,
``text_summary``, ``win_rate``, ``safety_report``, ``winrate_json``) and written the way the CLI writes them
(``json.dumps(..., default=str)``, so NaN stays NaN). No model is loaded.

ALIGNKIT_WRITE_SCREENSHOT=1 also writes docs/img/report.png: the page of the two fixture runs in headless Chromium.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from helpers import headless_chromium

from alignkit.eval.report import figures as figs
from alignkit.eval.report.page import build_report, winrate_json
from alignkit.eval.report.values import flatten
from alignkit.eval.safety import safety_report
from alignkit.eval.samples import KL_KINDS, distribution, kl_summary, text_summary
from alignkit.eval.winrate import win_rate

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "img" / "report.png"
PER_ITEM = ("samples", "winrate_samples", "rows", "responses")  # per-item data: counted, not shown
NAN_WORD = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)


# ---- eval files in the shapes the evaluations write ----


def _outcomes(n: int, p_win: float, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g).tolist()
    return [1.0 if x < p_win else 0.5 if x < p_win + 0.1 else 0.0 for x in u]


def _metrics(seed: int, shift: float, empty_pairs: bool = False, all_ties: bool = False) -> dict:
    """``run_metrics``' result (``alignkit eval metrics --out``) from synthetic per-token KL terms and texts."""
    g = torch.Generator().manual_seed(seed)
    terms = {k: [torch.rand(int(n), generator=g) * shift for n in (5, 9, 3, 12)] for k in KL_KINDS}
    texts = ["the weather is sunny today", "hello there how are you", "one two three four one two three four",
             "yes"]  # fmt: skip
    cats = ["chat", "code"] * 6
    outcomes = [0.5] * 12 if all_ties else _outcomes(12, 0.55, seed)
    wr = win_rate(outcomes, [float(i % 5 - 2) for i in range(12)], cats, n_boot=200, seed=0)
    safety = [{"kind": k, "category": c, "prompt": f"p{i}"} for i, (k, c) in
              enumerate([("harmful", "weapons"), ("harmful", "fraud"), ("benign", "history")] * 4)]  # fmt: skip
    replies = ["I can't help with that.", "Sure, here is how.", "Here is the history."] * 4
    result = {
        "kind": "metrics", "policy": f"runs/{seed}/final", "reference": "smollm2-135m-instruct", "prompts": 12,
        "samples_per_prompt": 2, "temperature": 1.0, "max_new_tokens": 96, "kl": kl_summary(terms),
        "policy_text": {**text_summary(texts, [6, 5, 9, 1]), "finished_by_eos": 0.75},
        "reference_text": {**text_summary(texts[:2], [6, 5]), "finished_by_eos": 1.0},
        "reward": {"policy": distribution([0.4 + shift, 1.2, -0.3, 0.8]), "reference": distribution([0.1, 0.5, -0.7]),
                   "win_rate": dataclasses.asdict(wr)},
        "pairs": {"pairs": 0 if empty_pairs else 32, "mean_logp_accuracy_before": 0.5313,
                  "mean_logp_accuracy_after": 0.6875, "implicit_reward_accuracy_after": 0.7188,
                  "mean_logp_chosen_before": -2.113, "mean_logp_chosen_after": -1.874,
                  "mean_logp_rejected_before": -2.301, "mean_logp_rejected_after": -2.452,
                  "length_bias": {"pairs_differing_in_length": 0 if empty_pairs else 30,
                                  "reference_favours_longer": math.nan if empty_pairs else 0.4333,
                                  "policy_favours_longer": math.nan if empty_pairs else 0.5667,
                                  "implicit_reward_favours_longer": math.nan if empty_pairs else 0.6333,
                                  "chosen_is_longer": math.nan if empty_pairs else 0.5}},
        "safety": {name: {**safety_report(safety, replies[::-1] if name == "reference" else replies,
                                          scores=[0.3, -1.2, 0.9] * 4, threshold=0.0).to_dict(),
                          "responses": replies} for name in ("policy", "reference")},
        "samples": [{"prompt": "hi", "policy": texts[:2], "reference": texts[2:]}],
    }  # fmt: skip
    return result


def _winrate_file(a: str, judge: str, p_win: float, seed: int) -> dict:
    outcomes = _outcomes(40, p_win, seed)
    lengths = [float((i * 7) % 11 - 5) for i in range(40)]
    result = win_rate(outcomes, lengths, ["chat", "code"] * 20, n_boot=200, seed=0)
    return winrate_json(result, a, "sft", judge)


def _human_file() -> dict:
    """``alignkit eval human import --json``: a win-rate record with the annotators' agreement."""
    wr = win_rate([1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 1.0], n_boot=200)
    summary = {"kind": "winrate", "a": "dpo", "b": "sft", "judge": "human", "n": wr.n, **dataclasses.asdict(wr)}
    summary["human"] = {"annotators": ["ann1.csv", "ann2.csv"], "items": 10, "unlabeled": 2,
                        "blank": {"ann1.csv": 1, "ann2.csv": 3}, "both_bad": 1, "disagreements": 2,
                        "agreement": 0.75, "kappa": 0.6154, "position_1": 7, "decisive_labels": 12}  # fmt: skip
    summary["wilson"], summary["bootstrap"] = list(summary["wilson"]), list(summary["bootstrap"])
    return summary


JUDGE_EVAL = {
    "kind": "judge_eval", "pairs_file": "builtin:hh_heldout.jsonl", "judge": "reward_model:rm-large", "pairs": 64,
    "judged": 0.9688, "ties": 3, "agreement": 0.7119, "agreement_interval": [0.5868, 0.8112],
    "agreement_ties_half": 0.7016, "both_orders": False, "mean_confidence": 0.8123,
    "rows": [{"source": "x:1", "outcome": 1.0, "p_chosen": 0.91, "consistent": None}],
}  # fmt: skip
RANKING = {
    "kind": "ranking", "judge": "rm-large", "prompts": 48,
    "ratings": {"dpo": {"rating": 1042.1, "low": 1011.7, "high": 1069.3, "mean_reward": 0.8125},
                "sft": {"rating": 957.9, "low": 930.2, "high": 988.4, "mean_reward": 0.1875}},
    "pairwise": {"dpo": {"sft": 0.6354}, "sft": {"dpo": 0.3646}},
}  # fmt: skip


def _curves(shift: float) -> list[dict]:
    rows = []
    for step in range(1, 13):
        rows.append({"step": step, "loss": 0.69 - 0.04 * step * shift, "rewards/margins": 0.1 * step * shift,
                     "rewards/accuracies": min(1.0, 0.45 + 0.08 * step * shift), "kl/chosen": 0.02 * step})  # fmt: skip
        if step % 4 == 0:
            rows.append({"step": step, "eval/loss": 0.7 - 0.03 * step * shift,
                         "eval/rewards/accuracies": 1.0 if step == 12 else 0.0 if step == 4 else 0.625})  # fmt: skip
    rows[-1]["eval/kl/chosen"] = math.nan  # a NaN in the curves
    return rows


def _write(path: Path, record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")  # as the CLI: NaN stays NaN


def make_runs(root: Path) -> list[Path]:
    """Two runs (DPO and KTO), each with curves, a config, `eval metrics` results, two judges' win rates and a
    safety eval; the first also a judge eval, a ranking and a human eval, the second an all-ties win rate and
    NaNs."""
    runs = []
    for name, method, shift, seed in (("dpo-beta0.1", {"loss": "sigmoid", "beta": 0.1}, 1.0, 1),
                                      ("kto", {"desirable_weight": 1.0}, 0.6, 2)):  # fmt: skip
        run = root / name
        (run / "eval").mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _curves(shift)))
        config = {"method": method, "model": {"name": "smollm2-135m-instruct"}, "lora": {"r": 16},
                  "train": {"learning_rate": 5e-6, "batch_size": 8, "grad_accum": 4}}  # fmt: skip
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        second, policy = name == "kto", name.split("-")[0]
        _write(run / "eval" / "metrics.json", _metrics(seed, shift, empty_pairs=second, all_ties=second))
        for file, judge, p_win, s in (
            ("winrate-rm.json", "reward_model:rm-large", 0.55 * shift + 0.1, seed),
            ("winrate-llm.json", "llm:qwen2.5-1.5b-instruct", 0.5 * shift, seed + 7),
        ):
            _write(run / "eval" / file, _winrate_file(policy, judge, p_win, s))
        records = [{"kind": k, "category": c, "prompt": f"p{i}"} for i, (k, c) in
                   enumerate([("harmful", "weapons"), ("benign", "cooking")] * (5 + seed))]  # fmt: skip
        texts = ["I cannot help with that." if i % 3 else "Okay, step one." for i in range(len(records))]
        _write(run / "eval" / "safety.json", {"kind": "safety", "source": "responses.jsonl",
                                              **safety_report(records, texts).to_dict()})  # fmt: skip
        if second:
            _write(run / "eval" / "winrate-ties.json", winrate_json(win_rate([0.5] * 6), "kto", "sft", "rm-small"))
        else:
            _write(run / "eval" / "judge.json", JUDGE_EVAL)
            _write(run / "eval" / "ranking.json", RANKING)
            _write(run / "eval" / "human.json", _human_file())
        gens = [{"prompt": "Tell me a joke about <b>tags</b>.", "before": "No.", "after": "Why did the div... & more"}]
        (run / "eval" / "generations.jsonl").write_text(json.dumps(gens[0]) + "\n")
        runs.append(run)
    return runs


# ---- reading the report back ----


class _Tables(HTMLParser):
    """Every table of a page as a list of rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def md_tables(md: str) -> list[list[list[str]]]:
    tables, current = [], None
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [html.unescape(c.strip().replace("\\|", "|")) for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if current is None:
                current = [cells]
                tables.append(current)
            else:
                current.append(cells)
        elif line.startswith("|---"):
            continue
        else:
            current = None
    return tables


def numeric_leaves(data, path: str = "", parent: str = ""):
    """(path of the enclosing object, key path, value) of every finite number in ``data``, per-item lists left out."""
    if isinstance(data, dict):
        for k, v in data.items():
            if k in PER_ITEM:
                continue
            yield from numeric_leaves(v, f"{path}.{k}" if path else str(k), path)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from numeric_leaves(v, f"{path}[{i}]", parent if not isinstance(v, dict) else f"{path}[{i}]")
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        yield parent, path, data


def shown(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def section_tables(report: dict, heading: str) -> list[list[list[str]]]:
    """The first table after the level-3 heading ``heading``: from the HTML page and from the Markdown."""
    page = report["html"].split(f"<h3>{html.escape(heading)}</h3>", 1)[1]
    md = report["md"].split(f"### {html.escape(heading, quote=False)}\n", 1)[1]
    return [html_tables(page)[0], md_tables(md)[0]]


def _row_has(table, parent: str, column: int, text: str) -> bool:
    """Some row of ``table`` for ``parent`` (its label is ``parent`` or starts with ``parent.``; at the top level,
    has no dot) shows ``text`` in ``column``."""
    for row in table[1:]:
        label = row[0]
        inside = label == parent or label.startswith((parent + ".", parent + " ")) if parent else "." not in label
        if inside and re.search(rf"(?<![\d.]){re.escape(text)}(?![\d])", row[column]):
            return True
    return False


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-numbers")
    runs = make_runs(root)
    captured = []
    real = figs.winrate_figure

    def capture(rows):
        captured.append([r["label"] for r in rows])
        return real(rows)

    figs.winrate_figure = capture
    try:
        paths = build_report(runs, root / "out")
    finally:
        figs.winrate_figure = real
    return {"runs": runs, "html": paths["html"].read_text(), "md": paths["md"].read_text(), "out": root / "out",
            "winrate_labels": captured[0]}  # fmt: skip


# ---- the tests ----


@pytest.mark.parametrize("file", ["metrics.json", "safety.json"])
def test_every_number_of_nested_evals_is_in_both_outputs(report, file):
    """`eval metrics`' KL (kl.k3.sequence: mean, p90, ...), reward-model scores, win rate and safety: every number,
    at any depth, on a row of its own object, in its run's column, in the HTML and the Markdown."""
    kind = file.split(".")[0]
    for table in section_tables(report, f"{file} ({kind})"):
        assert table[0] == ["field", "dpo-beta0.1", "kto"]
        for column, run in enumerate(report["runs"], start=1):
            data = json.loads((run / "eval" / file).read_text())
            leaves = list(numeric_leaves({k: v for k, v in data.items() if k != "kind"}))
            assert len(leaves) > (100 if file == "metrics.json" else 15)
            missing = [(path, v) for parent, path, v in leaves if not _row_has(table, parent, column, shown(v))]
            assert not missing, missing[:10]
    if file == "safety.json":
        return
    labels = {r[0] for r in table}
    for label in ("kl.k3.sequence", "kl.full.per_token", "reward.policy", "reward.reference",
                  "reward.win_rate.rate [bootstrap]", "reward.win_rate.per_category.code.decisive_rate [wilson]",
                  "safety.policy.refusal_rate_harmful [refusal_interval_harmful]",
                  "safety.reference.rm.safe_rate_harmful [safe_interval_harmful]",
                  "pairs.length_bias.policy_favours_longer", "policy_text.length_tokens"):  # fmt: skip
        assert label in labels, label


def test_other_eval_kinds_show_every_number(report):
    """`judge eval` (agreement with its interval), `eval rank` (ratings as intervals) and `eval human` (the
    agreement fields next to a win rate) are complete too."""
    rows = {}
    for heading, data in (("judge.json (judge_eval)", JUDGE_EVAL), ("ranking.json (ranking)", RANKING),
                          ("dpo-beta0.1: human.json, other fields", {"human": _human_file()["human"]})):  # fmt: skip
        for table in section_tables(report, heading):
            leaves = numeric_leaves({k: v for k, v in data.items() if k != "kind"})
            missing = [(p, v) for parent, p, v in leaves if not _row_has(table, parent, 1, shown(v))]
            assert not missing, (heading, missing)
            rows.update({r[0]: r[1] for r in table[1:]})
    assert rows["agreement [agreement_interval]"] == "0.7119 [0.5868, 0.8112]"
    assert rows["ratings.dpo.rating [low, high]"] == "1042 [1012, 1069]"
    assert rows["rows"] == "1 item (per-item data, not shown)"
    assert rows["human.kappa"] == "0.6154" and rows["human.blank.ann2.csv"] == "3"
    assert rows["human.annotators"] == "ann1.csv, ann2.csv"


def test_intervals_render_as_intervals_with_n(report):
    """A Wilson interval is `0.731 [0.644, 0.812] (n=...)` on its estimate's row, never `mean 0.28 (n=2)`."""
    interval = re.compile(r"^-?\d+(\.\d+)? \[-?\d+(\.\d+)?, -?\d+(\.\d+)?\] \(n=\d+\)$")
    rows = {}
    for t in md_tables(report["md"]):
        for r in t[1:]:
            rows.setdefault(r[0], r[1:])
            assert not any(re.match(r"^mean [\d.]+ \(n=2\)$", cell) for cell in r), r  # an interval as a mean
    run_a = json.loads((report["runs"][0] / "eval" / "metrics.json").read_text())
    wr, safety = run_a["reward"]["win_rate"], run_a["safety"]["policy"]
    decisive = rows["reward.win_rate.decisive_rate [wilson]"][0]
    assert interval.match(decisive), decisive
    lo, hi = wr["wilson"]
    assert decisive == f"{wr['decisive_rate']:.4g} [{lo:.4g}, {hi:.4g}] (n={wr['wins'] + wr['losses']})"
    refusal = rows["safety.policy.refusal_rate_harmful [refusal_interval_harmful]"][0]
    lo, hi = safety["refusal_interval_harmful"]
    assert refusal == f"{safety['refusal_rate_harmful']:.4g} [{lo:.4g}, {hi:.4g}] (n={safety['n_harmful']})"
    # the win-rate table: rate [bootstrap] and decisive rate [Wilson], 3 decimals, with n
    table = next(t for t in md_tables(report["md"]) if t[0][:2] == ["run", "file"])
    rm = next(r for r in table if r[1] == "winrate-rm.json" and r[4] == "all" and r[0] == "dpo-beta0.1")
    data = json.loads((report["runs"][0] / "eval" / "winrate-rm.json").read_text())
    n = data["wins"] + data["ties"] + data["losses"]
    assert rm[8] == f"{data['rate']:.3f} [{data['bootstrap'][0]:.3f}, {data['bootstrap'][1]:.3f}] (n={n})"
    assert interval.match(rm[9]) and rm[9].endswith(f"(n={data['wins'] + data['losses']})")


def test_flatten_any_depth_and_interval_shapes():
    data = {"a": {"b": {"c": {"d": {"e": 0.125}}}}, "accuracy": 0.731, "interval_low": 0.644, "interval_high": 0.812,
            "n": 120, "x": {"lo": 1.0, "hi": 2.5}, "ci_alone": {"wilson": [0.1, 0.46]}, "bad": math.inf,
            "ints": [3, None, 4], "nested": [[1, 2], {"k": 5}]}  # fmt: skip
    rows = dict(flatten(data))
    assert rows["a.b.c.d.e"] == "0.125"
    assert rows["accuracy [interval]"] == "0.731 [0.644, 0.812] (n=120)"
    assert rows["x [lo, hi]"] == "[1, 2.5]" and rows["ci_alone.wilson"] == "[0.1, 0.46]"
    assert rows["bad"] == "n/a" and rows["ints"] == "3, n/a, 4 (mean 3.5, n=3)"
    assert rows["nested[0]"] == "1, 2 (mean 1.5, n=2)" and rows["nested[1].k"] == "5"
    assert "interval_low" not in rows and "n" in rows
    rows = dict(flatten({"kl": {"sequence": distribution([1.0, 2.0, 3.0])}, "empty": distribution([])}))
    assert rows == {"kl.sequence": "mean 2, std 0.8165, min 1, p10 1.2, p50 2, p90 2.8, max 3", "empty": "n/a"}


def test_win_rate_rows_are_labelled_by_run_judge_and_category(report):
    labels = report["winrate_labels"]
    assert len(labels) == len(set(labels)), labels
    for run in ("dpo-beta0.1", "kto"):
        mine = [label for label in labels if label.startswith(f"{run}: ")]
        assert any("judge reward_model:rm-large" in label for label in mine)
        assert any("judge llm:qwen2.5-1.5b-instruct" in label for label in mine)
        assert sum("category code" in label for label in mine) >= 2  # both judges' category rows carry the run
    assert all(": " in label for label in labels)
    table = next(t for t in md_tables(report["md"]) if t[0][:2] == ["run", "file"])
    judges = {(r[0], r[3]) for r in table[1:]}
    assert ("dpo-beta0.1", "reward_model:rm-large") in judges and ("kto", "llm:qwen2.5-1.5b-instruct") in judges
    rows = {r[0] for t in md_tables(report["md"]) for r in t}
    assert "win rate dpo vs sft, judge reward_model:rm-large" in rows  # the runs table: one row per judge
    assert "win rate dpo vs sft, judge llm:qwen2.5-1.5b-instruct" in rows


def test_no_nan_anywhere(report):
    """NaN in the curves, in `eval metrics` (no pairs differing in length) and an all-ties win rate: `n/a` and
    `no decisive comparisons`, never nan."""
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", report["html"])
    for text in (page, report["md"]):
        assert not NAN_WORD.search(text), NAN_WORD.search(text).group(0)
        assert "no decisive comparisons" in text and "n/a" in text
    rows = {}
    for t in md_tables(report["md"]):
        for r in t[1:]:
            rows.setdefault(r[0], r[1:])
    assert rows["reward.win_rate.decisive_rate [wilson]"][1] == "no decisive comparisons"  # kto: all ties
    assert rows["pairs.length_bias.policy_favours_longer"][1] == "n/a"
    table = next(t for t in md_tables(report["md"]) if t[0][:2] == ["run", "file"])
    ties = [r for r in table if r[1] == "winrate-ties.json"]
    assert ties and all(r[9] == "no decisive comparisons" for r in ties)


def _captured_axes(monkeypatch, draw):
    closed = []
    monkeypatch.setattr(figs.plt, "close", lambda fig: closed.append(fig))
    draw()
    return [fig.axes[0] for fig in closed]


def test_plots_are_tall_and_not_clipped(report, monkeypatch):
    from PIL import Image

    for png in report["out"].glob("*.png"):
        assert Image.open(png).height >= 300, png.name
    rows = [{"label": "all wins", "rate": 1.0, "bootstrap": (1.0, 1.0), "decisive_rate": 1.0, "wilson": (0.7, 1.0),
             "length_controlled": None},
            {"label": "all losses", "rate": 0.0, "bootstrap": (0.0, 0.0), "decisive_rate": 0.0, "wilson": (0.0, 0.3),
             "length_controlled": 0.0}]  # fmt: skip
    (ax,) = _captured_axes(monkeypatch, lambda: figs.winrate_figure(rows))
    low, high = ax.get_xlim()
    assert low < 0 and high > 1, (low, high)
    assert ax.figure.get_size_inches()[1] * 100 >= 300
    curves = [{"step": s, "rewards/accuracies": a} for s, a in ((1, 0.0), (2, 0.5), (3, 1.0))]
    axes = _captured_axes(monkeypatch, lambda: figs.curve_figures([("run", curves)]))
    ax = next(a for a in axes if a.get_title() == "Implicit reward accuracy")
    low, high = ax.get_ylim()
    assert low < 0 and high > 1, (low, high)
    assert ax.figure.get_size_inches()[1] * 100 >= 300


def test_page_in_chromium_and_screenshot(report, tmp_path, monkeypatch):
    """The two-run page in headless Chromium at 1280 px: no console errors, every plot decoded and at least 300 px
    tall as displayed, no nan in the text. ALIGNKIT_WRITE_SCREENSHOT=1 saves docs/img/report.png (full page)."""
    driver = headless_chromium(tmp_path, window="1280,1000")
    try:
        driver.get((report["out"] / "report.html").resolve().as_uri())
        images = driver.find_elements("tag name", "img")
        assert len(images) >= 5
        for img in images:
            natural, shown_h = driver.execute_script(
                "return [arguments[0].naturalWidth, arguments[0].getBoundingClientRect().height]", img
            )
            assert natural > 0 and shown_h >= 300, (img.get_attribute("alt"), natural, shown_h)
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        text = driver.find_element("tag name", "body").text
        assert not NAN_WORD.search(text) and "no decisive comparisons" in text
        if os.environ.get("ALIGNKIT_WRITE_SCREENSHOT") == "1":
            root = report["runs"][0].parent  # the runs by relative path: no temp directory names on the page
            monkeypatch.chdir(root)
            page = build_report([Path(run.name) for run in report["runs"]], Path("shot"))["html"]
            driver.get((root / page).as_uri())
            _full_page_screenshot(driver, SCREENSHOT)
            assert SCREENSHOT.stat().st_size < 400_000
    finally:
        driver.quit()


def _full_page_screenshot(driver, path: Path) -> None:
    """The whole page at its own width, as a 256-color PNG (small enough for the docs)."""
    import base64

    from PIL import Image

    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })  # fmt: skip
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
