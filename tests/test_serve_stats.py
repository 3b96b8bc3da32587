"""``alignkit.serve.stats`` on hand-built rows (exact numbers: Wilson and Newcombe intervals from their formulas,
decision cases) and ``alignkit feedback stats`` on a real store, with its bad-input errors."""

from __future__ import annotations

import json
import math
import time

import pytest
from typer.testing import CliRunner

from alignkit.errors import UserError
from alignkit.serve.stats import (
    ab_decision,
    buckets,
    comparison_stats,
    decisions,
    latest_feedback,
    parse_duration,
    parse_time,
    pick_baseline,
    select,
    summarize,
    variant_stats,
)

T0 = int(time.time()) - 3 * 86400  # when the command tests' responses were made
Z = 1.959963984540054  # the 97.5% normal quantile


def wilson_formula(k: float, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval written out (independent of statsmodels)."""
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return center - half, center + half


def newcombe_formula(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p1 - p2 from the two Wilson intervals."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_formula(k1, n1), wilson_formula(k2, n2)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def resp(rid, variant="a", t=0.0, tokens=50, flags=(), content="An ordinary answer about the weather."):
    return {"id": rid, "variant": variant, "created": t, "completion_tokens": tokens, "flags": list(flags),
            "content": content, "model": f"model-{variant}",
            "messages": [{"role": "user", "content": "q"}]}  # fmt: skip


def fb(fid, rid, value, t=0.0, user=None, variant=None):
    snapshot = {"variant": variant} if variant else {}
    return {"id": fid, "response_id": rid, "value": value, "created": t, "user_hash": user, "snapshot": snapshot}


def rated(variant: str, ups: int, downs: int, t0: float = 0.0) -> tuple[list[dict], list[dict]]:
    """Responses of ``variant``, each with one rating: ``ups`` up then ``downs`` down."""
    rs, fs = [], []
    for i, value in enumerate(["up"] * ups + ["down"] * downs):
        rid = f"{variant}-{i}"
        rs.append(resp(rid, variant, t0 + i))
        fs.append(fb(f"fb-{rid}", rid, value, t0 + i, user=f"u{i}"))
    return rs, fs


def stats_of(**variants: tuple[int, int]) -> dict[str, dict]:
    """``variant_stats`` entries with these (ups, downs), as the decision reads them."""
    return {name: {"variant": name, "up": ups, "down": downs, "rated": ups + downs, "up_rate": ups / (ups + downs)}
            for name, (ups, downs) in variants.items()}  # fmt: skip


# ============================================================================================ per variant


def test_variant_stats_counts_and_wilson_interval():
    rs, fs = rated("a", 80, 20)
    rs.append(resp("a-extra", "a", tokens=150, flags=["violence"]))
    s = variant_stats(rs, fs)["a"]
    assert (s["responses"], s["flagged"], s["up"], s["down"], s["rated"]) == (101, 1, 80, 20, 100)
    assert s["up_rate"] == 0.8
    assert s["mean_completion_tokens"] == pytest.approx((100 * 50 + 150) / 101)
    assert s["interval"] == pytest.approx(wilson_formula(80, 100), abs=1e-12)
    assert s["interval"] == pytest.approx([0.7112, 0.8666], abs=1e-4)  # the textbook value for 80/100


def test_variant_of_a_rating_comes_from_its_snapshot_row_or_response():
    rs = [resp("r1", "a"), resp("r2", "b")]
    fs = [fb("f1", "r1", "up"), fb("f2", "r2", "down", variant="b"), {**fb("f3", "gone", "up"), "variant": "c"},
          fb("f4", "unknown", "up")]  # fmt: skip
    out = variant_stats(rs, fs)
    assert {v: (s["up"], s["down"]) for v, s in out.items()} == {"a": (1, 0), "b": (0, 1), "c": (1, 0)}
    assert out["c"]["responses"] == 0 and out["c"]["mean_completion_tokens"] is None  # rated, not in the window
    assert list(out) == ["a", "b", "c"]


def test_variant_without_ratings_has_no_rate():
    s = variant_stats([resp("r1", "a")], [])["a"]
    assert s["rated"] == 0 and s["up_rate"] is None and s["interval"] is None


def test_latest_feedback_keeps_one_rating_per_rater_and_response():
    rows = [fb("f1", "r1", "up", 1, "u1"), fb("f2", "r1", "down", 2, "u1"), fb("f3", "r1", "up", 3, "u2"),
            fb("f4", "r1", "up", 4), fb("f5", "r1", "down", 5)]  # fmt: skip
    kept, replaced = latest_feedback(reversed(rows))
    assert [r["id"] for r in kept] == ["f2", "f3", "f4", "f5"] and replaced == 1


def test_select_is_half_open():
    rows = [resp(str(t), t=float(t)) for t in range(5)]
    assert [r["id"] for r in select(rows, 1, 3)] == ["1", "2"]
    assert len(select(rows)) == 5 and [r["id"] for r in select(rows, until=1)] == ["0"]


# ============================================================================================ comparisons


def cmp(cid, va, vb, vote, a_shown="left"):
    return {"id": cid, "variant_a": va, "variant_b": vb, "vote": vote, "a_shown": a_shown, "created": 0.0}


def test_comparison_stats_ties_half_and_orientation():
    rows = [
        cmp("c1", "x", "y", "a"),  # x wins, shown left
        cmp("c2", "y", "x", "b"),  # x wins (B side), A=y shown left, so x was on the right
        cmp("c3", "y", "x", "a", a_shown="right"),  # y wins, shown right
        cmp("c4", "x", "y", "tie"),
        cmp("c5", "x", "y", "both_bad"),
        cmp("c6", "x", "y", None),  # not voted
        cmp("c7", "x", "x", "a"),  # one variant against itself: no pair
    ]
    (p,) = comparison_stats(rows)
    assert (p["a"], p["b"], p["votes"], p["wins_a"], p["wins_b"], p["ties"], p["both_bad"]) == ("x", "y", 5, 2, 1, 1, 1)
    assert p["win_rate_a"] == pytest.approx(3 / 5)  # 2 wins + (1 tie + 1 both bad) / 2
    assert p["interval"] == pytest.approx(wilson_formula(3, 5), abs=1e-12)
    assert p["decisive_rate_a"] == pytest.approx(2 / 3)
    assert p["decisive_interval"] == pytest.approx(wilson_formula(2, 3), abs=1e-12)
    assert p["left_share"] == pytest.approx(1 / 3)  # of 3 decisive votes only c1 went to the left


def test_comparison_stats_bad_vote_and_empty():
    assert comparison_stats([]) == []
    with pytest.raises(ValueError, match="vote 'maybe'"):
        comparison_stats([cmp("c1", "x", "y", "maybe")])


# ============================================================================================ decision


def test_promote_when_ahead_by_the_margin_and_significant():
    s = stats_of(base=(140, 60), cand=(170, 30))
    d = ab_decision(s["base"], s["cand"])
    assert (d["action"], d["reason"]) == ("promote", "ahead")
    assert d["diff"] == pytest.approx(0.15)
    assert d["diff_interval"] == pytest.approx(newcombe_formula(170, 200, 140, 200), abs=1e-9)
    assert d["diff_interval"][0] > 0 and d["p_value"] < 0.001
    assert d["sentence"].startswith("promote cand over baseline base: thumbs-up 0.850 (n=200) vs 0.700 (n=200), "
                                    "difference +0.150, 95% CI [+0.")  # fmt: skip


def test_keep_collecting_with_too_few_ratings_says_how_many_more():
    s = stats_of(base=(140, 60), cand=(35, 5))
    d = ab_decision(s["base"], s["cand"], min_n=100)
    assert (d["action"], d["reason"], d["more_needed"]) == ("keep_collecting", "too_few", {"cand": 60})
    assert d["diff"] is None
    assert d["sentence"] == ("keep collecting: cand vs baseline base needs 100 ratings each; 60 more for cand "
                             "(has 40)")  # fmt: skip
    d = ab_decision(stats_of(base=(5, 5))["base"], s["cand"], min_n=50)
    assert d["more_needed"] == {"cand": 10, "base": 40}


def test_keep_collecting_when_not_significant_with_an_estimate():
    s = stats_of(base=(70, 30), cand=(72, 28))
    d = ab_decision(s["base"], s["cand"])
    assert (d["action"], d["reason"]) == ("keep_collecting", "not_significant")
    lo, hi = d["diff_interval"]
    assert lo < 0 < hi and d["p_value"] > 0.5
    need = math.ceil(Z**2 * (0.7 * 0.3 + 0.72 * 0.28) / 0.02**2)
    assert d["more_needed"] == {"cand": need - 100, "base": need - 100}
    assert f"about {need - 100} more ratings per variant if the difference stays +0.020" in d["sentence"]


def test_significant_but_under_the_margin_is_not_promoted():
    s = stats_of(base=(7000, 3000), cand=(7300, 2700))
    d = ab_decision(s["base"], s["cand"], margin=0.05)
    assert (d["action"], d["reason"]) == ("keep_collecting", "below_margin")
    assert d["diff_interval"][0] > 0 and "under the +0.050 margin" in d["sentence"]
    assert ab_decision(s["base"], s["cand"], margin=0.02)["action"] == "promote"
    exactly = stats_of(base=(600, 1400), cand=(700, 1300))  # 0.35 - 0.30 is 0.04999999999999999 in floats
    assert ab_decision(exactly["base"], exactly["cand"])["action"] == "promote"


def test_roll_back_when_significantly_worse():
    s = stats_of(base=(140, 60), cand=(110, 90))
    d = ab_decision(s["base"], s["cand"])
    assert (d["action"], d["reason"]) == ("roll_back", "worse")
    assert d["diff"] == pytest.approx(-0.15) and d["diff_interval"][1] < 0
    assert d["sentence"].startswith("roll back cand (keep baseline base): thumbs-up 0.550 (n=200) vs 0.700")


def test_identical_all_up_is_not_significant():
    s = stats_of(base=(100, 0), cand=(100, 0))
    d = ab_decision(s["base"], s["cand"])
    assert d["reason"] == "not_significant" and d["p_value"] == 1.0 and d["more_needed"] == {}
    assert "the difference is too small to settle" in d["sentence"]


def test_bad_decision_options():
    s = stats_of(base=(1, 1), cand=(1, 1))
    with pytest.raises(UserError, match="--margin 1.5"):
        ab_decision(s["base"], s["cand"], margin=1.5)
    with pytest.raises(UserError, match="--min-n 0"):
        ab_decision(s["base"], s["cand"], min_n=0)


def test_baseline_choice_and_decisions_for_every_candidate():
    rs, fs = rated("big", 10, 0)
    s = variant_stats(rs + [resp("x", "small"), resp("y", "other")], fs)
    assert pick_baseline(s) == ("big", "most responses")
    assert pick_baseline(s, "small") == ("small", "given")
    assert pick_baseline({}) == (None, "no variants")
    with pytest.raises(UserError, match="--baseline nope: no such variant in this data \\(variants: big, other"):
        pick_baseline(s, "nope")
    assert [d["candidate"] for d in decisions(s, "big", min_n=1)] == ["other", "small"]
    assert decisions(s, None) == []


# ============================================================================================ time


def test_parse_time_forms():
    assert parse_time("1714560000") == 1714560000.0
    assert parse_time("2024-05-01") == 1714521600.0  # UTC midnight
    assert parse_time("2024-05-01T00:00:00Z") == 1714521600.0
    assert parse_time("2024-05-01T12:00+02:00") == 1714521600.0 + 10 * 3600
    assert parse_time("24h", now=1_000_000.0) == 1_000_000.0 - 86400
    for bad in ("yesterday", "2024-13-01", ""):
        with pytest.raises(UserError, match=f"--until {bad}: not a time. Fix: unix seconds"):
            parse_time(bad, "--until")


def test_parse_duration_forms():
    assert [parse_duration(x) for x in ("90s", "30m", "1h", "1d", "2w", "600", "1.5h")] == [
        90, 1800, 3600, 86400, 14 * 86400, 600, 5400
    ]  # fmt: skip
    for bad in ("0h", "h", "1y", "-1h"):
        with pytest.raises(UserError, match=f"--window {bad}: not a duration"):
            parse_duration(bad)


def test_buckets_split_by_time_aligned_to_the_window():
    rs = [resp("r1", "a", 3600 * 10 + 5), resp("r2", "b", 3600 * 10 + 100), resp("r3", "a", 3600 * 12 + 1)]
    fs = [fb("f1", "r1", "up", 3600 * 11 + 7)]  # rated an hour later: counted in its own hour, for variant a
    out = buckets(rs, fs, 3600)
    assert [(b["start"], b["end"]) for b in out] == [(36000, 39600), (39600, 43200), (43200, 46800)]
    assert [{v: (s["responses"], s["up"]) for v, s in b["variants"].items()} for b in out] == [
        {"a": (1, 0), "b": (1, 0)}, {"a": (0, 1)}, {"a": (1, 0)}
    ]  # fmt: skip
    assert buckets([], [], 3600) == []
    since = buckets(rs, [], 3600, since=36000 + 60)  # r1 is before it
    assert [(b["start"], list(b["variants"])) for b in since] == [(36060, ["b"]), (39660, ["a"])]
    with pytest.raises(UserError, match="splits this data into 7197 windows"):
        buckets(rs, [], 1)


def test_summarize_is_json_ready_and_windows_the_data():
    ra, fa = rated("a", 70, 30, t0=1000)
    rb, fb_ = rated("b", 90, 10, t0=1000)
    comparisons = [cmp("c1", "a", "b", "b"), cmp("c2", "a", "b", None)]
    out = summarize(ra + rb, fa + fb_, comparisons, since=1000, until=1050, window=3600, min_n=20)
    assert out["counts"] == {"responses": 100, "feedback": 100, "feedback_replaced": 0, "comparisons": 0, "votes": 0}
    assert [v["variant"] for v in out["variants"]] == ["a", "b"] and out["variants"][1]["up"] == 50
    assert out["baseline"] == "a" and out["baseline_chosen_by"] == "most responses"  # a tie: the first by name
    assert [d["reason"] for d in out["decisions"]] == ["not_significant"]  # all 50 up for both in [1000, 1050)
    assert len(out["windows"]) == 1 and out["windows"][0]["start"] == 1000
    assert set(out["monitor"]) == {"all", "variants"} and set(out["monitor"]["variants"]) == {"a", "b"}
    json.dumps(out, allow_nan=False)
    full = summarize(ra + rb, fa + fb_, [{**c, "created": 1000.0} for c in comparisons], baseline="a", min_n=20)
    assert full["counts"]["votes"] == 1 and full["comparisons"][0]["wins_b"] == 1
    assert full["decisions"][0]["action"] == "promote" and full["windows"] == []


# ============================================================================================ the command


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A store with two variants: b is clearly better; one comparison vote; one repeated rating (read only)."""
    from alignkit.serve.store import Store

    path = tmp_path_factory.mktemp("store") / "serve.sqlite"
    with Store(str(path)) as store:
        rows = []
        for variant in ("a", "b"):
            for i in range(100):
                rows.append({**resp(f"{variant}-{i}", variant, T0 + i), "params": {}})
        store.add_responses(rows)
        for variant, ups in (("a", 60), ("b", 90)):
            for i in range(100):
                store.add_feedback(f"{variant}-{i}", "up" if i < ups else "down", user_hash=f"u{i}")
        store.add_feedback("a-0", "down", user_hash="u0")  # u0 changes their mind: the store replaces the up
        store.add_comparison({"id": "cmp-1", "messages": [{"role": "user", "content": "q"}], "response_a": "a-1",
                              "response_b": "b-1", "variant_a": "a", "variant_b": "b", "a_shown": "right",
                              "created": float(T0)})  # fmt: skip
        store.add_vote("cmp-1", "b")
    return path


def run_cli(*args):
    from alignkit.cli.main import app

    return CliRunner().invoke(app, ["feedback", *args])


def test_stats_command_tables_decision_and_detectors(store_path):
    result = run_cli("stats", "--db", str(store_path), "--baseline", "a", "--min-n", "50")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "200 responses, 200 ratings, 1 comparisons (1 voted)" in out  # u0's change replaced its row
    assert "per variant" in out and "95% Wilson CI" in out and "comparisons (A vs B)" in out
    assert "baseline a (given; set it with --baseline)" in out
    assert "decision: promote b over baseline a: thumbs-up 0.900 (n=100) vs 0.590 (n=100)" in out
    assert "failure detectors (all traffic)" in out and "thumbs_up_drop" in out and "length_explosion" in out


def test_stats_command_json_and_window(store_path):
    result = run_cli("stats", "--db", f"sqlite:///{store_path}", "--json", "--window", "1d", "--min-n", "50")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["baseline"] == "a" and data["decisions"][0]["action"] == "promote" and data["window"] == 86400
    assert {v["variant"]: v["up"] for v in data["variants"]} == {"a": 59, "b": 90}
    assert data["comparisons"][0]["wins_b"] == 1 and data["comparisons"][0]["left_share"] == 1.0  # b was left
    assert len(data["windows"]) >= 2  # responses three days ago, ratings now
    assert sum(s["responses"] for w in data["windows"] for s in w["variants"]) == 200
    assert sum(s["up"] for w in data["windows"] for s in w["variants"]) == 149


def test_stats_command_time_range_selects_rows(store_path):
    result = run_cli("stats", "--db", str(store_path), "--json", "--since", str(T0 + 10), "--until", str(T0 + 20))
    data = json.loads(result.output)
    assert data["counts"]["responses"] == 20 and data["counts"]["feedback"] == 0  # ratings are created now
    assert data["decisions"][0]["reason"] == "too_few"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--db", "{tmp}/missing.sqlite"], "missing.sqlite does not exist. Fix: pass the database alignkit serve"),
        (["--db", "sqlite://"], "names no database file"),
        (["--since", "yesterday"], "--since yesterday: not a time"),
        (["--since", "2024-05-02", "--until", "2024-05-01"], "--until 2024-05-01 (2024-05-01 00:00:00Z) is not after"),
        (["--window", "soon"], "--window soon: not a duration"),
        (["--margin", "2"], "--margin 2.0: a thumbs-up rate difference must be in [0, 1)"),
        (["--min-n", "0"], "--min-n 0: need at least 1 rating"),
        (["--monitor-window", "0"], "--monitor-window 0"),
        (["--baseline", "zzz"], "--baseline zzz: no such variant in this data (variants: a, b)"),
    ],
)
def test_stats_command_bad_input_is_one_clear_error(store_path, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--db" not in args:
        args += ["--db", str(store_path)]
    result = run_cli("stats", *args)
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "missing.sqlite").exists()  # a read command creates no database


def test_stats_default_db_missing_is_an_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("stats")
    assert isinstance(result.exception, UserError)
    assert "runs/serve/alignkit.sqlite does not exist" in str(result.exception)
    assert not (tmp_path / "runs").exists()


def test_stats_command_on_an_empty_store(tmp_path):
    from alignkit.serve.store import Store

    Store(str(tmp_path / "empty.sqlite")).close()
    result = run_cli("stats", "--db", str(tmp_path / "empty.sqlite"))
    assert result.exit_code == 0, result.output
    assert "0 responses, 0 ratings, 0 comparisons (0 voted); all times" in result.output
    assert "decision: no data yet" in result.output and "0 recent responses, 30 needed" in result.output


def test_stats_command_on_a_file_that_is_not_a_store(tmp_path):
    (tmp_path / "notes.sqlite").write_text("not a database, just text\n" * 100)
    result = run_cli("stats", "--db", str(tmp_path / "notes.sqlite"))
    assert isinstance(result.exception, UserError) and "is not a readable alignkit store" in str(result.exception)
