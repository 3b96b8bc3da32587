"""Reward models: calibration metrics, aggregation, pooling, training (full, LoRA, K heads, ensembles), saved
normalization, scoring with a different policy tokenizer, best-of-N, and the CLI with bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import pair_records, tiny_sections
from helpers import make_word_tokenizer, tiny_llama, write_jsonl

from alignkit.errors import ConfigError, DataError, UserError
from alignkit.reward_model import RewardModel, aggregate, uncertainty
from alignkit.reward_model.best_of_n import best_of_n, best_of_n_kl
from alignkit.reward_model.model import RewardScorer, load_classifier
from alignkit.stats import calibration_terms, ece_from_terms, reward_metrics
from alignkit.train import make_config, run

# ------------------------------------------------------------------------------------------- metrics


def test_reward_metrics_closed_forms():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0, 0.5]), torch.tensor([0.0, 1.0, -1.5, 0.5])
    m = reward_metrics(chosen, rejected)
    p = torch.sigmoid(chosen - rejected)
    assert m["accuracy"] == pytest.approx(0.5)  # 2 > 0, -1 > -1.5; ties do not count
    assert m["margin"] == pytest.approx((chosen - rejected).mean().item())
    assert m["brier"] == pytest.approx(((p - 1) ** 2).mean().item())
    both = torch.cat([chosen, rejected])
    assert m["reward_mean"] == pytest.approx(both.mean().item())
    assert m["reward_std"] == pytest.approx(both.std(unbiased=False).item())


def test_ece_matches_direct_binning():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(200, generator=g) * 2, torch.randn(200, generator=g)
    p = torch.sigmoid(chosen - rejected)
    conf, correct = torch.maximum(p, 1 - p), (chosen > rejected).float()
    expected = 0.0
    for b in range(10):
        lo, hi = 0.5 + b * 0.05, 0.5 + (b + 1) * 0.05
        sel = (conf >= lo) & ((conf < hi) if b < 9 else (conf <= hi))
        if sel.any():
            expected += sel.float().mean().item() * abs(correct[sel].mean().item() - conf[sel].mean().item())
    assert reward_metrics(chosen, rejected)["ece"] == pytest.approx(expected, abs=1e-6)
    # the per-pair terms average across batches: two halves give the same ECE
    halves = [calibration_terms(chosen[s], rejected[s]).mean(0) for s in (slice(0, 100), slice(100, 200))]
    assert ece_from_terms((halves[0] + halves[1]) / 2) == pytest.approx(expected, abs=1e-6)


def test_perfectly_calibrated_and_overconfident():
    # confident and always right: ECE = 1 - confidence
    m = reward_metrics(torch.tensor([10.0, 10.0]), torch.tensor([0.0, 0.0]))
    assert m["ece"] == pytest.approx(1 - torch.sigmoid(torch.tensor(10.0)).item(), abs=1e-6)
    # confident and always wrong
    m = reward_metrics(torch.tensor([0.0, 0.0]), torch.tensor([10.0, 10.0]))
    assert m["ece"] == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item(), abs=1e-6)
    assert m["accuracy"] == 0.0


# ------------------------------------------------------------------------------------------- aggregation


def test_aggregations():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    assert aggregate(r, "mean").tolist() == [3.0, 0.0]
    assert aggregate(r, "min").tolist() == [1.0, 0.0]
    assert aggregate(r, "percentile", percentile=50).tolist() == pytest.approx([2.5, 0.0])
    assert aggregate(r, "percentile", percentile=0).tolist() == [1.0, 0.0]
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 4)
    assert uncertainty(r).tolist() == pytest.approx([std, 0.0])
    assert aggregate(r, "mean_minus_std", alpha=0.5).tolist() == pytest.approx([3 - 0.5 * std, 0.0])
    one = torch.tensor([[2.0], [-1.0]])  # a single model: every aggregation is the reward itself
    for how in ("mean", "min", "percentile", "mean_minus_std"):
        assert aggregate(one, how).tolist() == [2.0, -1.0]
    assert uncertainty(one).tolist() == [0.0, 0.0]


def test_aggregation_bad_input():
    r = torch.zeros(2, 3)
    with pytest.raises(UserError, match="unknown aggregation"):
        aggregate(r, "median")
    with pytest.raises(UserError, match="percentile"):
        aggregate(r, "percentile", percentile=150)
    with pytest.raises(UserError, match="alpha"):
        aggregate(r, "mean_minus_std", alpha=-1)


# ------------------------------------------------------------------------------------------- pooling


def test_scorer_pools_last_real_token_not_pad_id(tiny_model_dir, embedded_tokenizer):
    """Right-padded rows score as if alone; EOS (= pad id) inside and at the end of a row is a real token."""
    model = load_classifier(tiny_model_dir, 2, embedded_tokenizer)
    scorer = RewardScorer(model)
    eos = embedded_tokenizer.eos_token_id
    rows = [[5, 6, eos, 7, 8, eos], [9, 10, eos]]
    ids = torch.full((2, 6), eos)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        batch = scorer(ids, mask)
        alone = torch.cat([scorer(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])
    assert batch.shape == (2, 2)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    # plain transformers gives the same reward for one unpadded row (pad == eos leaves pad_token_id unset)
    assert model.config.pad_token_id is None
    with torch.no_grad():
        hf = model(torch.tensor([rows[0]])).logits
    torch.testing.assert_close(hf, alone[:1], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- training


def _rm_sections(model_dir, tmp_path, name="rm", steps=12, **method):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(24))
    sec = tiny_sections(model_dir, str(data), tmp_path / name, max_steps=steps, learning_rate=3e-3)
    sec["data"]["eval"] = str(data)
    sec["method"] = method
    return sec


def test_normalization_pass_keeps_no_autograd_graph(tiny_model_dir, tmp_path, monkeypatch):
    """finish() scores norm_pairs training pairs after training: with grad on, every batch's graph (all the
    activations) stayed alive until the end, 24 GB on hh-rlhf with full fine-tuning (OOM-killed)."""
    import alignkit.train.methods.reward_model as reward_module

    seen, score = [], reward_module._score

    def spy(module, batch):
        out = score(module, batch)
        seen.append((torch.is_grad_enabled(), out.requires_grad))
        return out

    monkeypatch.setattr(reward_module, "_score", spy)
    run("rm", **_rm_sections(tiny_model_dir, tmp_path, norm_pairs=1000))
    assert seen and seen[-1] == (False, False)


def test_rm_trains_and_saves_normalization(tiny_model_dir, tmp_path):
    result = run("rm", **_rm_sections(tiny_model_dir, tmp_path, norm_pairs=1000))
    ev = result.eval_metrics
    for key in ("eval/rewards/accuracies", "eval/rewards/margins", "eval/calibration/brier", "eval/calibration/ece",
                "eval/rewards/mean", "eval/rewards/std"):  # fmt: skip
        assert key in ev
    assert not any("calibration/bin" in k or "rewards/_" in k for k in ev)
    assert ev["eval/rewards/accuracies"] > 0.9  # the contrast in pair_records is easy
    info = json.loads((result.model_dir / "alignkit_reward.json").read_text())
    assert info["heads"] == 1 and len(info["mean"]) == 1 and info["std"][0] > 0
    rm = RewardModel.load(result.model_dir)
    pairs = pair_records(24)
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    normalized = rm.score(prompts, responses)
    # normalized on these same 24 pairs: mean 0, std 1
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert normalized.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    # the loop's eval ECE (accumulated per batch) equals the ECE of the saved model's raw scores
    raw = rm.score(prompts, responses, normalize=False)[:, 0]
    direct = reward_metrics(raw[:24], raw[24:])
    assert ev["eval/calibration/ece"] == pytest.approx(direct["ece"], abs=1e-4)
    assert ev["eval/rewards/accuracies"] == pytest.approx(direct["accuracy"])
    assert ev["eval/rewards/std"] == pytest.approx(direct["reward_std"], abs=1e-4)


def test_rm_text_pairs_are_scored_as_chat(tiny_model_dir, tmp_path, embedded_tokenizer):
    """Text prompt/response go through the chat template, in training and in scoring alike."""
    from alignkit.data import Tokenizer, as_chat

    records = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "No."} for i in range(8)]
    data = write_jsonl(tmp_path / "text.jsonl", records)
    sec = tiny_sections(tiny_model_dir, str(data), tmp_path / "rm", max_steps=2)
    result = run("rm", **sec)
    rm = RewardModel.load(result.model_dir)
    tok = Tokenizer(embedded_tokenizer)
    assert rm.tokenize("What is 1 plus 1?", "It is 2.") == tok.split(*as_chat("What is 1 plus 1?", "It is 2."))
    assert "<|im_start|>user" in embedded_tokenizer.decode(rm.tokenize("hi", "there")[0])
    # chat_format off: the text is used as is
    sec["method"] = {"chat_format": False}
    sec["train"]["output_dir"] = str(tmp_path / "rm-plain")
    plain = RewardModel.load(run("rm", **sec).model_dir)
    assert plain.tokenize("hi", "there") == tok.split("hi", "there")


def test_rm_lora_saves_head_and_reloads_same_scores(tiny_model_dir, tmp_path):
    sec = _rm_sections(tiny_model_dir, tmp_path, steps=4)
    sec["lora"] = {"r": 4, "dropout": 0.0}
    result = run("rm", **sec)
    assert (result.model_dir / "adapter_config.json").is_file()
    rm = RewardModel.load(result.model_dir)
    assert rm.members[0].adapter == "member-0"
    p = pair_records(4)
    a = rm.score([x["prompt"] for x in p], [x["chosen"] for x in p])
    b = RewardModel.load(result.output_dir).score([x["prompt"] for x in p], [x["chosen"] for x in p])  # run dir
    torch.testing.assert_close(a, b)
    # the trained head is saved in full with the adapter
    from safetensors.torch import load_file

    saved = load_file(result.model_dir / "adapter_model.safetensors")
    assert any("score" in k for k in saved) and any("lora_A" in k for k in saved)


def test_rm_heads_on_frozen_trunk(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    result = run("rm", **_rm_sections(tiny_model_dir, tmp_path, steps=6, heads=3, freeze_trunk=True, bootstrap=True))
    trained = load_file(result.model_dir / "model.safetensors")
    base = load_file(f"{tiny_model_dir}/model.safetensors")
    for name, value in base.items():  # the trunk is untouched
        if name.startswith("model."):
            torch.testing.assert_close(trained[name], value)
    w = trained["score.weight"]
    assert w.shape[0] == 3 and not torch.allclose(w[0], w[1])
    assert "eval/rewards/head_std" in result.eval_metrics
    rm = RewardModel.load(result.model_dir)
    r, std, every = rm.reward(["hi"], ["there"], how="mean_minus_std", alpha=1.0)
    assert every.shape == (1, 3) and std.item() > 0
    assert r.item() == pytest.approx(every.mean().item() - std.item(), abs=1e-5)


def test_rm_ensemble_of_lora_members_shares_one_base(tiny_model_dir, tmp_path):
    sec = _rm_sections(tiny_model_dir, tmp_path, steps=3, ensemble_size=2, bootstrap=True)
    sec["lora"] = {"r": 4, "dropout": 0.0}
    result = run("rm", **sec)
    out = result.output_dir
    assert json.loads((out / "ensemble.json").read_text())["members"] == ["member-0/model", "member-1/model"]
    ens = RewardModel.load(out)
    assert [m.adapter for m in ens.members] == ["member-0", "member-1"]
    assert ens.members[0].scorer is ens.members[1].scorer  # one base model, two adapters
    p = pair_records(3)
    prompts, responses = [x["prompt"] for x in p], [x["chosen"] for x in p]
    both = ens.score(prompts, responses)
    assert both.shape == (3, 2)
    for k in range(2):  # equal to loading each member alone
        alone = RewardModel.load(out / f"member-{k}" / "model").score(prompts, responses)
        torch.testing.assert_close(both[:, k : k + 1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[:, 0], both[:, 1])  # different seeds and resamples
    # resume keeps finished members
    logs = []
    run("rm", make_config("rm", **sec), resume=True, log=logs.append)
    assert sum("already trained" in line for line in logs) == 2


def test_rm_config_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="method.freeze_trunk"):
        make_config("rm", **{**_rm_sections(tiny_model_dir, tmp_path, freeze_trunk=True), "lora": {"r": 4}})
    with pytest.raises(ConfigError, match="method.heads"):
        make_config("rm", **_rm_sections(tiny_model_dir, tmp_path, heads=0))
    with pytest.raises(ConfigError, match="method.margin"):
        make_config("rm", **_rm_sections(tiny_model_dir, tmp_path, margin=-1.0))


def test_rm_margin_and_centering_change_the_loss(tiny_model_dir, tmp_path):
    base = run("rm", **_rm_sections(tiny_model_dir, tmp_path, "a", steps=1))
    margin = run("rm", **_rm_sections(tiny_model_dir, tmp_path, "b", steps=1, margin=1.0))
    assert margin.history[0]["loss"] > base.history[0]["loss"]  # a required gap makes the same rewards cost more


def test_loading_non_reward_dir_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="alignkit_reward.json"):
        RewardModel.load(tiny_model_dir)
    with pytest.raises(UserError, match="does not exist"):
        RewardModel.load(tmp_path / "nope")


# ------------------------------------------------------------------------------------------- best-of-N


@pytest.fixture(scope="module")
def trained_rm(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    return run("rm", **_rm_sections(tiny_model_dir, tmp, steps=6)).model_dir


def test_best_of_n_kl_bound():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(UserError):
        best_of_n_kl(0)


def test_best_of_n_with_a_policy_of_another_tokenizer(trained_rm):
    """The policy (word-level tokenizer) and the reward model (SmolLM2's) share no vocabulary: the samples are
    decoded to text and re-tokenized by the reward model."""
    policy_tok = make_word_tokenizer()
    policy = tiny_llama(vocab_size=len(policy_tok), bos_token_id=2, eos_token_id=5, pad_token_id=0)
    rm = RewardModel.load(trained_rm)
    prompts = ["hello how is the weather", "tell me a joke"]
    report = best_of_n(policy, policy_tok, rm, prompts, n=4, max_new_tokens=6, temperature=1.0, seed=3)
    assert len(report.results) == 2
    for res in report.results:
        assert len(res.samples) == 4
        assert res.best == int(res.rewards.argmax())
        torch.testing.assert_close(rm.score([res.prompt] * 4, res.samples)[:, 0], res.rewards, atol=1e-5, rtol=1e-5)
    s = report.summary()
    assert s["reward_mean_best"] >= s["reward_mean_n1"]
    assert s["kl_bound"] == pytest.approx(best_of_n_kl(4))
    with pytest.raises(UserError, match="temperature"):
        best_of_n(policy, policy_tok, rm, prompts, n=2, temperature=0.0)


# ------------------------------------------------------------------------------------------- CLI


def test_cli_train_score_best_of_n(tiny_model_dir, tmp_path, trained_rm):
    from typer.testing import CliRunner

    from alignkit.cli.main import app

    runner = CliRunner()
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(8))
    res = runner.invoke(
        app,
        ["train", "rm", "--set", f"model.name={tiny_model_dir}", "--set", f"data.train={data}", "--set",
         "model.dtype=fp32", "--set", f"train.output_dir={tmp_path / 'cli-rm'}", "--set", "train.max_steps=1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli-rm" / "model" / "alignkit_reward.json").is_file()

    to_score = write_jsonl(tmp_path / "score.jsonl", [{"prompt": "What is 1 plus 2?", "response": "It is 3."}])
    res = runner.invoke(app, ["score", str(trained_rm), "-i", str(to_score), "-o", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "s.jsonl").read_text())
    assert set(row) >= {"prompt", "response", "reward", "reward_std", "rewards"}

    res = runner.invoke(app, ["score", str(trained_rm), "-i", str(data), "-o", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "ece" in res.output
    assert "reward_chosen" in json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])

    res = runner.invoke(
        app,
        ["best-of-n", "-r", str(trained_rm), "-m", tiny_model_dir, "-p", "hello", "-p", "tell me a joke", "-n", "3",
         "--max-new-tokens", "4", "-o", str(tmp_path / "bon")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "bon" / "summary.json").read_text())
    assert summary["n"] == 3 and summary["prompts"] == 2
    assert (tmp_path / "bon" / "best_of_n.png").is_file()
    assert len((tmp_path / "bon" / "samples.jsonl").read_text().splitlines()) == 2


def test_score_bad_input_names_line_and_field(trained_rm, tmp_path):
    from alignkit.reward_model.scoring import score_records

    rm = RewardModel.load(trained_rm)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "only a prompt"}])
    from alignkit.data import read_records

    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'response': is missing"):
        score_records(rm, read_records(str(bad)))
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "a", "response": "  "}])
    with pytest.raises(DataError, match="empty"):
        score_records(rm, read_records(str(empty)))


def test_cli_score_errors(trained_rm, tmp_path):
    from typer.testing import CliRunner

    from alignkit.cli.main import app

    runner = CliRunner()
    f = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "response": "b"}])
    res = runner.invoke(app, ["score", str(trained_rm), "-i", str(f), "-o", str(f)])
    assert res.exit_code != 0 and "refusing to overwrite" in str(res.exception)
    res = runner.invoke(app, ["score", str(trained_rm), "-i", str(f), "-o", str(tmp_path / "o.jsonl"),
                              "--aggregate", "median"])  # fmt: skip
    assert res.exit_code != 0 and "median" in str(res.exception)


def test_rm_prefix_sharing_trains_like_plain_layout(tiny_model_dir, tmp_path):
    runs = []
    for shared, packed in ((False, False), (True, False), (True, True)):
        sec = _rm_sections(tiny_model_dir, tmp_path, f"rm-{shared}-{packed}", steps=3)
        sec["train"].update(prefix_sharing=shared, packing=packed)
        runs.append(run("rm", **sec))
    for other in runs[1:]:
        for a, b in zip(runs[0].history, other.history):
            for key in ("loss", "rewards/margins", "grad_norm"):
                if key in a:
                    assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
