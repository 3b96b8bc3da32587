"""On-policy distillation (``alignkit train distill``, GKD): the student samples, a tiny teacher scores every
position, and the divergence falls; in multi-turn episodes too; bad teachers are clear errors."""

from __future__ import annotations

import pytest
from helpers import online_config, write_jsonl

from alignkit.errors import ConfigError, UserError
from alignkit.train import run

QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    """Another word-level Llama (other seed, other weights) with the same tokenizer as word_model_dir."""
    from helpers import VOCAB, make_word_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("teacher")
    tiny_llama(vocab_size=len(VOCAB) + 2, initializer_range=0.3, eos_token_id=VOCAB["<|im_end|>"],
               seed=7).save_pretrained(path)  # fmt: skip
    make_word_tokenizer().save_pretrained(path)
    return str(path)


def distill_config(student: str, teacher: str | None, tmp_path, **sections):
    words = "hi hello how is the weather today tell me a joke".split()
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": " ".join(words[i % 5 : i % 5 + 4])} for i in range(16)])
    defaults = {"rollout": {"prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 12},
                "method": {"teacher": teacher, "reward_workers": 0}}  # fmt: skip
    return online_config("distill", student, str(data), tmp_path / "run", defaults, **sections)


def test_the_student_moves_toward_the_teacher_on_its_own_samples(word_model_dir, teacher_dir, tmp_path):
    """Reverse KL (the default; the JSD's other betas are checked in closed form in test_policy_losses)."""
    cfg = distill_config(word_model_dir, teacher_dir, tmp_path, train={"max_steps": 8, "learning_rate": 1e-2},
                         method={"rewards": ["reward_fns:yes_share"]})  # fmt: skip
    result = run("distill", cfg, **QUIET)
    rows = [r for r in result.history if "loss" in r]
    first, last = rows[0]["distill/divergence"], sum(r["distill/divergence"] for r in rows[-3:]) / 3
    assert last < 0.75 * first, [round(r["distill/divergence"], 3) for r in rows]
    assert "reward/mean" in rows[0]  # the reward is measured, not trained on
    # the one-sample estimate of the reverse KL on the sampled tokens falls too
    assert sum(r["distill/sampled_reverse_kl"] for r in rows[-3:]) / 3 < rows[0]["distill/sampled_reverse_kl"]


def test_distillation_in_an_environment_skips_observation_tokens(talker_dir, teacher_dir, tmp_path):
    cfg = distill_config(talker_dir, teacher_dir, tmp_path, train={"max_steps": 2},
                         rollout={"environment": "envs:Chatter", "max_tokens_per_turn": 6, "max_new_tokens": 20},
                         data={"max_length": 64})  # fmt: skip
    rows = [r for r in run("distill", cfg, **QUIET).history if "loss" in r]
    assert rows and rows[0]["episode/turns"] > 1 and rows[0]["distill/divergence"] > 0


def test_bad_teachers(word_model_dir, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="method.teacher is not set"):
        distill_config(word_model_dir, None, tmp_path)
    with pytest.raises(ConfigError, match="method.jsd_beta"):
        distill_config(word_model_dir, tiny_model_dir, tmp_path, method={"jsd_beta": 2})
    with pytest.raises(UserError, match="vocabulary"):
        run("distill", distill_config(word_model_dir, tiny_model_dir, tmp_path), **QUIET)
