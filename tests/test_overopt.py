"""Overoptimization math: the unbiased best-of-n estimator against brute force, KL of best-of-n, the fitted forms."""

import itertools
import math

import numpy as np
import pytest

from alignkit.eval.overopt import (
    best_of_n_weights,
    bon_form,
    conservative_scores,
    fit_form,
    overstatement_at,
    pool_best_of_n_kl,
    rl_form,
    unbiased_best_of_n,
)
from alignkit.reward_model.best_of_n import best_of_n_kl


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_unbiased_best_of_n_equals_the_mean_over_all_subsets(n):
    rng = np.random.default_rng(n)
    m = 7
    proxy, gold = rng.normal(size=m), rng.normal(size=m)
    brute = np.mean([gold[max(s, key=lambda i: proxy[i])] for s in itertools.combinations(range(m), n)])
    assert unbiased_best_of_n(proxy, gold, n) == pytest.approx(brute, rel=1e-10)
    # several value columns at once
    both = unbiased_best_of_n(proxy, np.stack([gold, proxy], 1), n)
    assert both.shape == (2,) and both[0] == pytest.approx(brute)


def test_ties_in_the_selecting_score_are_broken_at_random():
    proxy = np.array([0.0, 1.0, 1.0])  # the two best are tied
    gold = np.array([5.0, 2.0, 4.0])
    # best of 3 is item 1 or 2 with equal chance
    assert unbiased_best_of_n(proxy, gold, 3) == pytest.approx(3.0)
    subsets = {(0, 1): 2.0, (0, 2): 4.0, (1, 2): 3.0}  # a tie within the subset averages
    assert unbiased_best_of_n(proxy, gold, 2) == pytest.approx(np.mean(list(subsets.values())))


def test_weights_and_errors():
    w = best_of_n_weights(64, 8)
    assert w.sum() == pytest.approx(1) and (w[:7] == 0).all() and np.all(np.diff(w[7:]) > 0)
    assert best_of_n_weights(5, 1) == pytest.approx(np.full(5, 0.2))
    with pytest.raises(ValueError, match="pool"):
        best_of_n_weights(4, 5)
    with pytest.raises(ValueError, match="selection scores"):
        unbiased_best_of_n([1.0, 2.0], [1.0], 1)


def test_pool_kl_is_below_the_analytic_bound_and_approaches_it():
    assert pool_best_of_n_kl(10, 1) == pytest.approx(0.0, abs=1e-12)
    for n in (2, 4, 16, 64):
        kls = [pool_best_of_n_kl(m, n) for m in (2, 8, 64, 100_000)]
        assert all(k <= best_of_n_kl(n) + 1e-12 for k in kls) and kls == sorted(kls)
        assert kls[-1] == pytest.approx(best_of_n_kl(n), rel=2e-3)
    # two items, best of 2 with replacement: the top one with 3/4
    assert pool_best_of_n_kl(2, 2) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))


def test_fitted_forms_recover_known_parameters_and_peaks():
    d = np.linspace(0.2, 3.0, 15)
    fit = fit_form(d, bon_form(d, 1.2, 0.3), "bon")
    assert fit["alpha"] == pytest.approx(1.2, rel=1e-5) and fit["beta"] == pytest.approx(0.3, rel=1e-5)
    assert fit["d_peak"] == pytest.approx(2.0) and fit["reward_peak"] == pytest.approx(1.2)
    fit = fit_form(d, rl_form(d, 0.8, 0.5), "rl")
    assert fit["alpha"] == pytest.approx(0.8, rel=1e-5) and fit["beta"] == pytest.approx(0.5, rel=1e-5)
    assert fit["d_peak"] == pytest.approx(math.exp(0.8 / 0.5 - 1), rel=1e-5)
    assert float(rl_form(np.array(0.0), 1, 1)) == 0.0
    rising = fit_form(d, 0.5 * d + 0.05 * d**2, "bon")  # no turnover: beta < 0
    assert rising["d_peak"] == math.inf and overstatement_at(rising, rising) is None
    assert fit_form([0.0, 1.0], [0.0, 1.0]) is None  # one point at d > 0


def test_overstatement_at_the_gold_peak():
    gold = {"alpha": 1.0, "beta": 0.5, "d_peak": 1.0, "form": "bon"}  # gold peaks at d = 1 with 0.5
    proxy = {"alpha": 1.0, "beta": 0.1, "d_peak": 5.0, "form": "bon"}  # proxy reads 0.9 there
    assert overstatement_at(proxy, gold) == {"d": 1.0, "value": pytest.approx(0.4), "gold_peaked": True}
    # gold's peak beyond the measured range: read at the largest measured d instead (no extrapolation)
    at_edge = overstatement_at(proxy, gold, d_max=0.5)
    assert at_edge["gold_peaked"] is False and at_edge["value"] == pytest.approx(0.5 * 0.95 - 0.5 * 0.75)


def test_conservative_scores():
    r = np.array([[1.0, 3.0], [2.0, 2.0]])
    assert conservative_scores(r, "mean") == pytest.approx([2, 2])
    assert conservative_scores(r, "min") == pytest.approx([1, 2])
    assert conservative_scores(r, "mean_minus_var", 0.5) == pytest.approx([1.5, 2])
    assert conservative_scores(r, "mean_minus_std", 1.0) == pytest.approx([1, 2])
    with pytest.raises(ValueError, match="unknown"):
        conservative_scores(r, "max")


def test_overopt_lab_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path):
    """Gold trained, pairs relabeled, two proxies, a pool of 8, best-of-n to 8, one checkpoint, fits, JSON, plot."""
    import json

    from conftest import pair_records
    from helpers import write_jsonl
    from typer.testing import CliRunner

    from alignkit.cli.main import app

    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_records(30))
    rm = {"model": {"name": tiny_model_dir, "dtype": "fp32", "device": "cpu"}, "data": {"max_length": 64},
          "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3}}  # fmt: skip
    config = tmp_path / "overopt.yaml"
    config.write_text(json.dumps({
        "policy": tiny_model_dir, "pairs": str(pairs), "proxy_sizes": [8, 16], "proxy_eval_pairs": 8,
        "proxy_heads": 2, "label_noise": 0.1, "rm": rm, "prompts": str(pairs), "prompt_limit": 3, "pool": 8,
        "ns": [1, 2, 4, 8], "max_new_tokens": 6, "checkpoints": [{"label": "same", "model": tiny_model_dir}],
        "checkpoint_samples": 2, "output_dir": str(tmp_path / "lab"),
    }))  # fmt: skip
    result = CliRunner().invoke(app, ["eval", "overopt", "--config", str(config)])
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "lab" / "overopt.json").read_text())
    assert out["kind"] == "overopt" and (tmp_path / "lab" / "overopt.png").stat().st_size > 10_000
    bon = [p for p in out["points"] if p["method"] == "bon"]
    assert {p["selector"] for p in bon} == {"gold (oracle)", "proxy-8", "proxy-16"}
    oracle = [p["gold"] for p in bon if p["selector"] == "gold (oracle)"]
    assert oracle[0] == pytest.approx(0.0, abs=1e-5)  # n = 1 is the pool mean, standardized to 0
    assert oracle == sorted(oracle)  # selecting by gold itself can only raise gold
    for name in ("proxy-8", "proxy-16"):
        own = [p["proxy"][name] for p in bon if p["selector"] == name]
        assert own == sorted(own) and set(out["scoring"][name]) == {"mean", "min", "mean_minus_var", "mean_minus_std"}
    ckpt = [p for p in out["points"] if p["method"] == "rl"]
    assert len(ckpt) == 1 and ckpt[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the initial policy itself
    assert "gold_bon/proxy-8" in out["fits"] and "gold agrees" in result.output
    # a rerun reuses the trained reward models
    again = CliRunner().invoke(app, ["eval", "overopt", "--config", str(config), "--set", "checkpoints=[]"])
    assert again.exit_code == 0 and again.output.count("reusing") == 3


def test_overopt_config_errors_name_the_field(tmp_path):
    from alignkit.errors import ConfigError
    from alignkit.recipes.overopt import load_overopt_config

    with pytest.raises(ConfigError, match="ns"):
        load_overopt_config(None, ["pairs=p.jsonl", "prompts=p.jsonl", "pool=8", "ns=[1,16]"])
    with pytest.raises(ConfigError, match="prompts"):
        load_overopt_config(None, ["pairs=p.jsonl"])
    with pytest.raises(ConfigError, match="did you mean 'pool'"):
        load_overopt_config(None, ["pairs=p.jsonl", "prompts=p.jsonl", "pools=8"])
