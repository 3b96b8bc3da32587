"""`alignkit report`: the HTML page and Markdown from a real tiny run plus hand-made eval results; the page in
headless Chromium (no console errors, every plot decoded and at least 300 px tall as displayed, a screenshot that is
not blank). Nested eval results, intervals, judges' labels and NaN: tests/test_report_numbers.py."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import pair_records
from helpers import headless_chromium, tiny_sections, write_jsonl

from alignkit.errors import UserError
from alignkit.eval.report.page import build_report, winrate_json
from alignkit.eval.report.runs import read_eval

WINRATE = {
    "kind": "winrate", "a": "dpo <b>", "b": "sft", "judge": "rm-large", "wins": 30, "ties": 4, "losses": 14,
    "decisive_rate": 0.6818, "wilson": [0.5344, 0.8004], "rate": 0.6667, "bootstrap": [0.5417, 0.7917],
    "length_controlled": 0.612,
    "per_category": {
        "code": {"wins": 10, "ties": 2, "losses": 8, "decisive_rate": 0.5556, "wilson": [0.337, 0.754], "rate": 0.55,
                 "bootstrap": [0.35, 0.75], "length_controlled": None},
        "chat": {"wins": 20, "ties": 2, "losses": 6, "decisive_rate": 0.7692, "wilson": [0.579, 0.89], "rate": 0.75,
                 "bootstrap": [0.589, 0.893]},
    },
}  # fmt: skip
SCRIPT_PROMPT = "say <script>alert('x')</script> hi"


def _overopt() -> dict:
    points = []
    for n in (1, 2, 4, 8, 16, 32):
        kl = math.log(n) - (n - 1) / n
        d = math.sqrt(kl)
        points.append({"method": "bon", "label": f"n={n}", "n": n, "kl": kl, "d": d, "gold": d * (1 - 0.35 * d),
                       "proxy": {"rm-small": 1.1 * d}})  # fmt: skip
    for step, kl in enumerate((0.5, 1.0, 2.0, 4.0)):
        d = math.sqrt(kl)  # no "d": the reader computes sqrt(kl)
        points.append({"method": "rl", "label": f"step {10 * step}", "n": None, "kl": kl,
                       "gold": d * (0.8 - 0.5 * math.log(d)), "proxy": {"rm-small": 0.9 * d}})  # fmt: skip
    fits = {"gold_bon": {"alpha": 1.0, "beta": 0.35, "d_peak": 1.4286}, "gold_rl": {"alpha": 0.8, "beta": 0.5}}
    return {"kind": "overopt", "points": points, "fits": fits, "scoring": {"gold": "rm-large", "prompts": 64}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A 3-step DPO run with held-out eval on the tiny model, plus eval/ results written by hand."""
    from alignkit.train import make_config, run

    root = tmp_path_factory.mktemp("report")
    data = write_jsonl(root / "pairs.jsonl", pair_records(24))
    sections = tiny_sections(tiny_model_dir, str(data), root / "dpo-run", eval_steps=1)
    sections["data"]["eval_fraction"] = 0.25
    sections["lora"] = {"r": 4}
    out = run("dpo", make_config("dpo", **sections), log=lambda *a, **k: None).output_dir
    (out / "eval").mkdir()
    (out / "eval" / "winrate.json").write_text(json.dumps(WINRATE))
    (out / "eval" / "overopt.json").write_text(json.dumps(_overopt()))
    math_result = {"kind": "math", "accuracy": 0.4375, "n": 64, "per_level": {"easy": 0.8125}, "rewards": [1, 0, 1, 1]}
    (out / "eval" / "math.json").write_text(json.dumps(math_result))
    (out / "eval" / "broken.json").write_text('{"kind": "winrate", "a": "x"')
    write_jsonl(out / "eval" / "generations.jsonl", [
        {"prompt": SCRIPT_PROMPT, "before": "one & two", "after": "three | four"},
        {"prompt": [{"role": "user", "content": "What is 2 plus 3?"}], "response": "It is 5."},
    ])  # fmt: skip
    return out


def test_report_tables_images_and_escaping(run_dir, tmp_path):
    logged = []
    paths = build_report([run_dir], tmp_path / "out", log=logged.append)
    page, md = paths["html"].read_text(), paths["md"].read_text()
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["curve-accuracy.png", "curve-kl.png", "curve-loss.png", "curve-margins.png", "overopt-1.png",
                    "winrate.png"]  # fmt: skip
    assert page.count("<img ") == 6 and page.count('src="data:image/png;base64,') == 6
    for png in pngs:
        assert f"]({png})" in md
    # self-contained: no scripts, nothing fetched
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in md and "<script" not in md
    assert "dpo &lt;b&gt; vs sft" in page and "three \\| four" in md and "one &amp; two" in page
    # the numbers
    final_loss = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r][-1]
    for text in (page, md):
        assert f"{final_loss['loss']:.4g}" in text
        assert "0.667" in text and "[0.542, 0.792]" in text and "[0.534, 0.800]" in text and "0.612" in text
        assert "0.550" in text and "[0.350, 0.750]" in text  # a category row
        assert "0.4375" in text and "1, 0, 1, 1 (mean 0.75, n=4)" in text and "0.8125" in text  # the generic table
        assert "0.667 [0.542, 0.792] (n=48)" in text and "0.682 [0.534, 0.800] (n=44)" in text  # intervals with n
        assert "d (alpha - beta d)" in text and "1.429" in text  # the fits
        assert "LoRA r=4" in text
    assert "<tr><td>method</td><td>dpo</td></tr>" in page and "| method | dpo |" in md
    # the broken file is listed, named, and did not cost the rest
    assert any("broken.json" in line and "not valid JSON" in line for line in logged)
    assert "broken.json" in page and "not valid JSON" in md


def test_two_runs_side_by_side(run_dir, tmp_path):
    other = tmp_path / "run-b"
    (other / "eval").mkdir(parents=True)
    shutil.copy(run_dir / "metrics.jsonl", other / "metrics.jsonl")
    (other / "eval" / "math.json").write_text(json.dumps({"kind": "math", "accuracy": 0.5625, "n": 64}))
    paths = build_report([run_dir, other], tmp_path / "out", title="DPO vs <other>")
    page = paths["html"].read_text()
    assert "<title>DPO vs &lt;other&gt;</title>" in page
    assert "<th>dpo-run</th><th>run-b</th>" in page  # the runs table and the shared math.json table
    assert page.count("<th>field</th><th>dpo-run</th><th>run-b</th>") == 1
    assert "0.4375" in page and "0.5625" in page
    assert "<tr><td>dpo-run</td><td>winrate.json</td><td>dpo &lt;b&gt; vs sft</td>" in page  # rows name the run
    assert page.count("<img ") == 6  # curves overlaid, not repeated per run


def test_bad_run_dirs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"nope does not exist\. Fix:"):
        build_report([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty holds neither metrics.jsonl nor eval/\. Fix:"):
        build_report([tmp_path / "empty"], tmp_path / "out")


@pytest.mark.parametrize(
    "record, message",
    [
        ([1, 2], "holds a JSON list, not an object"),
        ({"accuracy": 0.5}, 'no "kind" field'),
        ({**WINRATE, "wins": "30"}, "field 'wins' is '30': need a count"),
        ({**WINRATE, "per_category": {"code": {**WINRATE["per_category"]["code"], "bootstrap": [0.1]}}},
         r"field 'per_category.code.bootstrap' is \[0.1\]: need an interval"),
        ({"kind": "overopt", "points": []}, "field 'points' is \\[\\]: need a non-empty list"),
        ({"kind": "overopt", "points": [{"method": "bon", "gold": 1.0}]}, r"'points\[0\]' has no 'd'"),
        ({**_overopt(), "fits": {"gold_bon": {"alpha": "one"}}}, "field 'fits.gold_bon.alpha' is 'one'"),
    ],
)  # fmt: skip
def test_malformed_eval_files_are_skipped_with_the_reason(record, message, tmp_path):
    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "bad.json").write_text(json.dumps(record))
    (tmp_path / "run" / "eval" / "ok.json").write_text(json.dumps({"kind": "safety", "refusal_rate": 0.125}))
    logged = []
    page = build_report([tmp_path / "run"], tmp_path / "out", log=logged.append)["html"].read_text()
    assert len(logged) == 1 and "bad.json" in logged[0]
    assert re.search(message, logged[0]), logged[0]
    assert "0.125" in page  # the rest of the report is there


def test_winrate_json_is_read_back(tmp_path):
    from alignkit.eval.winrate import win_rate

    def read_back(record: dict):
        path = tmp_path / "winrate.json"
        path.write_text(json.dumps(record))
        return read_eval(path).data

    result = win_rate([1, 1, 0, 0.5, 1, 0], categories=["a", "a", "a", "b", "b", "b"])
    data = read_back(winrate_json(result, "A", "B", "judge"))
    assert data["wins"] == 3 and data["rate"] == pytest.approx(result.rate) and data["judge"] == "judge"
    assert data["per_category"]["b"]["ties"] == 1
    # nothing decisive: the decisive rate and its interval are NaN, written as null, read back as NaN
    empty = winrate_json(win_rate([0.5, 0.5]), "A", "B")
    assert empty["decisive_rate"] is None and math.isnan(read_back(empty)["wilson"][0])


def test_cli_report(run_dir, tmp_path, monkeypatch, capsys):
    from alignkit.cli.main import main

    def alignkit(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["alignkit", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        return exit_.value.code

    out = tmp_path / "cli-out"
    assert alignkit("report", str(run_dir), "--out", str(out), "--title", "tiny") == 0
    printed = capsys.readouterr()
    assert f"wrote {out / 'report.html'}" in printed.out and f"wrote {out / 'report.md'}" in printed.out
    assert "skipped" in printed.err and "broken.json" in printed.err
    assert "<title>tiny</title>" in (out / "report.html").read_text()
    assert alignkit("report", str(run_dir)) == 0  # default --out: FIRST_RUN_DIR/report
    assert f"wrote {run_dir / 'report' / 'report.html'}" in capsys.readouterr().out
    assert alignkit("report", str(tmp_path / "missing")) == 2
    printed = capsys.readouterr()
    assert "missing" in printed.err and "Fix:" in printed.err and "Traceback" not in printed.err


def _browser(tmp_path: Path):
    return headless_chromium(tmp_path)


def _not_blank(png: bytes) -> tuple[float, float]:
    """(std of the gray levels, share of pixels that are not near-white) of a PNG."""
    import io

    from PIL import Image

    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float(gray.std()), float((gray < 200).mean())


def test_page_in_headless_chromium(run_dir, tmp_path):
    paths = build_report([run_dir], tmp_path / "out")
    t0 = time.perf_counter()
    driver = _browser(tmp_path)
    try:
        driver.get(paths["html"].resolve().as_uri())
        images = driver.find_elements("tag name", "img")
        assert len(images) == 6
        for img in images:
            loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            assert loaded and loaded > 0, img.get_attribute("alt")
            height = driver.execute_script("return arguments[0].getBoundingClientRect().height", img)
            assert height >= 300, (img.get_attribute("alt"), height)  # readable, not a strip
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        std, ink = _not_blank(driver.get_screenshot_as_png())
        assert std > 10 and ink > 0.01, (std, ink)
        driver.execute_script("arguments[0].scrollIntoView()", images[0])
        std, ink = _not_blank(images[0].screenshot_as_png)  # a plot, as drawn on the page
        assert std > 10 and ink > 0.01, (std, ink)
        assert driver.title.startswith("alignkit report: dpo-run")
    finally:
        driver.quit()
    print(f"browser check: {time.perf_counter() - t0:.1f}s")
