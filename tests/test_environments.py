"""Multi-turn rollouts with environments and tools: the tolerant tool-call parser, the calculator and the sandboxed
Python tool, timeouts, the built-in environments, observation tokens from the chat template, the multi-turn sampler
(KV cache kept across turns = re-prefilled history, token for token; its log-probs = the trainer's; independent of
the batch; limits), and GRPO / PPO training on episodes (learning, observation tokens out of the loss, resume)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from helpers import Crash, crash_at, online_config, write_jsonl

from alignkit.data import Tokenizer
from alignkit.data.collate import collate_samples
from alignkit.data.jsonl import read_jsonl
from alignkit.errors import ConfigError, UserError
from alignkit.generation.sampler import Sampler, SamplingParams, TurnLimits
from alignkit.logprobs import token_logprobs
from alignkit.rewards.environments import StepsEnvironment, load_environment
from alignkit.rewards.tools import MalformedCall, ToolCall, ToolRunner, calculator, make_tool, parse_tool_calls
from alignkit.train import run

QUIET = {"log": lambda *a, **k: None}
CALC = {"calculator": make_tool(calculator)}


# ---------------------------------------------------------------------------------------------- tool calls


@pytest.mark.parametrize(
    "text, expected",
    [
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>', {"expression": "2+3"}),
        ("<tool_call>{'name': 'calculator', 'arguments': {'expression': '2+3'}}", {"expression": "2+3"}),  # no end
        ('<tool_call>{"name": "calculator", "parameters": {"expression": "2+3",},}</tool_call>', {"expression": "2+3"}),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}</tool_call>', {"expression": "2+3"}),
        ('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"2+3\\"}"}</tool_call>',
         {"expression": "2+3"}),
        ('<tool_call>{"name": "calculator", "arguments": "2+3"}</tool_call>', {"expression": "2+3"}),
        ('<tool_call>```json\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n```</tool_call>',
         {"expression": "2+3"}),
        ('<tool_call>calculator("2+3")</tool_call>', {"expression": "2+3"}),
        ("<tool_call>calculator(expression='2+3')</tool_call>", {"expression": "2+3"}),
        ('{"name": "calculator", "arguments": {"expression": "2+3"}}', {"expression": "2+3"}),  # Llama 3 style
    ],
)  # fmt: skip
def test_tool_calls_small_models_write_are_understood(text, expected):
    (call,) = parse_tool_calls(text, CALC)
    assert call == ToolCall("calculator", expected)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<tool_call></tool_call>", "empty"),
        ("<tool_call>calculate 2+3</tool_call>", "not JSON"),
        ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', "no tool named 'search'"),
        ('<tool_call>{"arguments": {"expression": "1"}}</tool_call>', 'no "name"'),
        ("<tool_call>[1, 2]</tool_call>", "must be an object"),
        ("<tool_call>search('x')</tool_call>", "no tool named 'search'"),
    ],
)
def test_malformed_calls_become_a_reason_not_an_exception(text, reason):
    (call,) = parse_tool_calls(text, CALC)
    assert isinstance(call, MalformedCall) and reason in call.reason


def test_a_plain_answer_calls_no_tool():
    assert parse_tool_calls("The answer is 5.", CALC) == []
    assert len(parse_tool_calls("<tool_call>calculator('1+1')</tool_call> and <tool_call>calculator('2')", CALC)) == 2


@pytest.mark.parametrize(
    "expression, value",
    [("2 + 3 * 4", "14"), ("(12 + 7) * 3", "57"), ("7 / 2", "3.5"), ("2^10", "1024"), ("84 ÷ 4 =", "21"),
     ("-3 - -4", "1"), ("1/3", "0.333333")],
)  # fmt: skip
def test_calculator(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize(
    "expression", ["__import__('os')", "9**9**9", "10**20", "1/0", "x + 1", "(1).real", "'a' * 3", "", "1" * 300]
)
def test_calculator_refuses_what_is_not_small_arithmetic(expression):
    with pytest.raises(ValueError):
        calculator(expression)


def test_a_hanging_tool_times_out_and_errors_are_observations():
    release = threading.Event()

    def wait(seconds: float) -> str:
        """Sleep.

        Args:
            seconds: How long.
        """
        release.wait(seconds)
        return "woke"

    tools = {"wait": make_tool(wait, timeout=0.2), **CALC}
    runner = ToolRunner(tools)
    calls = parse_tool_calls(
        '<tool_call>wait(60)</tool_call><tool_call>calculator("1/0")</tool_call><tool_call>calculator("6*7")'
        "</tool_call><tool_call>calculator(x=1)</tool_call><tool_call>nope</tool_call>",
        tools,
    )
    t0 = time.perf_counter()
    out, counts = runner.run(calls)
    assert time.perf_counter() - t0 < 5  # the hanging call did not stall the step
    assert "took longer than 0.2 s" in out[0] and "division by zero" in out[1] and out[2] == "42"
    assert "calculator" in out[3] and out[4].startswith("error: not JSON")
    assert (counts.calls, counts.timeouts, counts.errors, counts.malformed) == (4, 1, 2, 1)
    release.set()
    runner.close()


def test_python_tool_runs_in_the_sandbox():
    factory, close = load_environment("python", {"tool_timeout": 1.5})
    env = factory()
    env.reset({"prompt": "what is 6 * 7?", "answer": "42"})
    code = (
        "import socket, os\\nprint(6 * 7)\\ntry:\\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\\n"
        "    print('net')\\nexcept OSError:\\n    print('no network')\\nprint(os.path.exists('/work'))"
    )
    result = env.step('<tool_call>{"name": "python", "arguments": {"code": "' + code + '"}}</tool_call>')
    assert result.observations[0]["content"].split() == ["42", "no", "network", "False"], result
    assert not result.done and result.counts.calls == 1
    slow = env.step('<tool_call>python("while True: pass")</tool_call>')
    assert "error" in slow.observations[0]["content"] and slow.counts.errors + slow.counts.timeouts == 1
    close()


# ---------------------------------------------------------------------------------------------- environments


def test_tool_environment_episode():
    factory, close = load_environment("calculator", {"tool_bonus": 0.5})
    env = factory()
    opening = env.reset({"prompt": "Ben has 12 bags of 7 apples. How many apples?", "answer": "84"})
    assert opening[0]["role"] == "system" and "<tool_call>" in opening[0]["content"]
    assert opening[1] == {"role": "user", "content": "Ben has 12 bags of 7 apples. How many apples?"}
    bad = env.step("<tool_call>calculator 12*7</tool_call>")
    assert bad.observations[0]["content"].startswith("error:") and bad.counts.malformed == 1 and not bad.done
    good = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>')
    assert good.observations == [{"role": "tool", "content": "84"}] and not good.done
    final = env.step("Ben has 84 apples. Answer: 84")
    assert final.done and final.rewards == {"correct": 1.0, "used_tool": 0.5}
    env.reset({"prompt": "2+2?", "answer": "4"})
    assert env.step("Answer: 5").rewards == {"correct": 0.0, "used_tool": 0.0}
    close()


def test_steps_environment():
    env = StepsEnvironment()
    opening = env.reset({"prompt": "", "start": 5, "steps": [["+", 3], ["*", 2], ["-", 4]]})
    assert opening[1]["content"] == "Start with 5. Add 3."
    first = env.step("8")
    assert first.observations == [{"role": "user", "content": "Multiply by 2."}] and not first.done
    assert not env.step("15").done
    last = env.step("The number is now 12.")
    assert last.done and last.rewards == {"steps": pytest.approx(2 / 3), "correct": 1.0}
    with pytest.raises(UserError, match="'start'"):
        env.reset({"prompt": "x"})
    with pytest.raises(UserError, match="op one of"):
        env.reset({"prompt": "x", "start": 1, "steps": [["^", 2]]})


def test_loading_environments_by_name_and_path(tmp_path):
    factory, _ = load_environment("envs:Chatter", {"turns": 3})
    assert factory().turns == 3
    with pytest.raises(UserError, match="no module named"):
        load_environment("no_such_module:Env")
    with pytest.raises(UserError, match="environment_args"):
        load_environment("envs:Chatter", {"colour": 1})
    with pytest.raises(UserError, match="unknown rollout.environment_args"):
        load_environment("calculator", {"colour": 1})
    bad = tmp_path / "bad_env.py"
    bad.write_text("class Env:\n    def reset(self, record):\n        return []\n")
    with pytest.raises(UserError, match="no step method"):
        load_environment(f"{bad}:Env")


def test_observation_tokens_extend_the_conversation(embedded_tokenizer):
    """Turn tokens + observation tokens = the chat template's rendering of the whole conversation."""
    tok = Tokenizer(embedded_tokenizer)
    opening = [{"role": "user", "content": "What is 12 * 7?"}]
    prompt = tok.tool_prompt_ids(opening, [CALC["calculator"].schema])
    assert "<tools>" in tok.hf.decode(prompt) and '"calculator"' in tok.hf.decode(prompt)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>'
    turn = tok.encode(call) + [tok.eos_id]
    observation = tok.observation_ids([{"role": "tool", "content": "84"}])
    conversation = [*opening, {"role": "assistant", "content": call}, {"role": "tool", "content": "84"}]
    plain = tok.prompt_ids(tuple(conversation))
    assert tok.prompt_ids(tuple(opening)) + turn + observation == plain


# ---------------------------------------------------------------------------------------------- the sampler


@pytest.fixture(scope="module")
def talker(talker_dir):
    """The talker model (conftest: turns end by EOS) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(talker_dir).eval(), Tokenizer(AutoTokenizer.from_pretrained(talker_dir))


def test_multi_turn_sampling_keeps_the_cache_and_scores_like_the_trainer(talker):
    model, tok = talker
    sampler = Sampler(model, tok)
    prompts = [sampler.prompt_ids(p) for p in ["how is the weather today ?", "tell me a joke", "hi"]]
    obs = [tok.encode("the weather is"), tok.encode("hi")]
    seen = []

    def respond(ends):
        seen.extend(ends)
        return [None if e.turn == 3 else obs[(e.prompt + e.sample) % 2] for e in ends]

    params, limits = SamplingParams(n=3), TurnLimits(max_turns=4, max_tokens_per_turn=12, max_total_tokens=60)
    cached = sampler.sample_episodes(prompts, params, [1, 2, 3], respond, limits)
    episodes = [e for group in cached for e in group]
    assert max(e.turns for e in episodes) == 3 and sum(e.turns > 1 for e in episodes) >= 5
    for prompt, group in zip(prompts, cached):
        for e in group:
            assert len(e.tokens) == len(e.logps) == len(e.action_mask) <= 60
            assert all(len(t) <= 12 for t in e.turn_tokens) and sum(e.action_mask) == sum(map(len, e.turn_tokens))
            ids = torch.tensor([prompt + e.tokens])
            want = token_logprobs(model, ids, torch.ones_like(ids), torch.tensor([[0] * len(prompt) + e.action_mask]))
            torch.testing.assert_close(torch.tensor(e.logps), want[0, len(prompt) :], atol=2e-5, rtol=1e-5)
    # the history re-prefilled every turn (the path any backend can take) draws the very same tokens
    prefilled = sampler.sample_episodes(prompts, params, [1, 2, 3], respond, limits, keep_cache=False)
    assert [[e.tokens for e in g] for g in prefilled] == [[e.tokens for e in g] for g in cached]
    # a prompt's episodes do not depend on the other prompts of the batch
    alone = sampler.sample_episodes([prompts[1]], params, [2], lambda ends: respond([
        type(e)(1, e.sample, e.tokens, e.finish, e.turn, e.can_continue) for e in ends]), limits)  # fmt: skip
    assert [e.tokens for e in alone[0]] == [e.tokens for e in cached[1]]


def test_turn_and_token_limits(talker):
    model, tok = talker
    sampler = Sampler(model, tok)
    prompt = [sampler.prompt_ids("tell me a joke")]
    forever = lambda ends: [tok.encode("hi") for _ in ends]  # noqa: E731 (never ends the episode itself)
    episodes = sampler.sample_episodes(prompt, SamplingParams(n=6), [5], forever, TurnLimits(2, 12, 200))[0]
    assert all(e.turns <= 2 for e in episodes)
    assert {e.finish_reason for e in episodes if e.turns == 2} <= {"turns", "length"}
    short = sampler.sample_episodes(prompt, SamplingParams(n=6), [5], forever, TurnLimits(8, 12, 20))[0]
    assert all(len(e.tokens) <= 20 for e in short) and {e.finish_reason for e in short} == {"length"}


# ---------------------------------------------------------------------------------------------- training


def env_config(model_dir, tmp_path, out: str, command: str = "grpo", **sections):
    words = "hi hello how is the weather today tell me a joke".split()
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": " ".join(words[i % 5 : i % 5 + 4])} for i in range(16)])
    rollout = {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 24, "environment": "envs:Chatter",
               "max_tokens_per_turn": 8, "max_turns": 3}  # fmt: skip
    return online_config(command, model_dir, str(data), tmp_path / out,
                         {"rollout": rollout, "method": {"reward_workers": 0}, "data": {"max_length": 64}},
                         **sections)  # fmt: skip


def test_grpo_learns_in_an_environment_and_trains_only_the_models_tokens(talker_dir, tmp_path, monkeypatch):
    import alignkit.train.online.grpo as grpo

    observed = []
    real = grpo.GRPOMethod.loss

    def spy(self, module, batch):  # every batch the loss sees: its mask is 0 on the environment's tokens
        losses, metrics = real(self, module, batch)
        observed.append(float(batch["completion_mask"].sum()) / max(1.0, float((batch["sampler_logps"] != 0).sum())))
        return losses, metrics

    collated = []
    real_collate = grpo.GRPOMethod.collate
    monkeypatch.setattr(grpo.GRPOMethod, "loss", spy)
    monkeypatch.setattr(
        grpo.GRPOMethod, "collate", lambda self, items: collated.append(items) or real_collate(self, items)
    )
    result = run("grpo", env_config(talker_dir, tmp_path, "run", train={"max_steps": 12}), **QUIET)
    rows = [r for r in result.history if "reward/mean" in r]
    first, last = sum(r["reward/mean"] for r in rows[:3]) / 3, sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert last > first + 0.2, [round(r["reward/mean"], 3) for r in rows]
    for key in ("episode/turns", "episode/observation_tokens", "tools/calls", "tools/timeouts", "rewards/env/yes/mean"):
        assert key in rows[0], key
    assert max(r["episode/turns"] for r in rows) > 1.5
    assert max(r["logprobs/sampler_mismatch"] for r in rows) < 1e-4  # the sampler scores what the trainer scores
    # the loss's mask covers exactly the model's tokens (those with a sampler log-prob), never an observation
    assert observed and all(abs(x - 1.0) < 1e-6 for x in observed), observed
    multi = [s for items in collated for s in items if s.action_mask and 0 in s.action_mask]
    assert multi and all(s.action_tokens < len(s.completion_ids) for s in multi)
    batch = collate_samples(multi[:4], 0)
    for i, s in enumerate(multi[:4]):
        start = len(s.prompt_ids)
        assert batch["completion_mask"][i, start : start + len(s.action_mask)].tolist() == s.action_mask


def test_environment_runs_resume_exactly_and_ppo_skips_observations(talker_dir, tmp_path):
    common = {"train": {"max_steps": 3, "save_steps": 2}, "method": {"beta": 0.05}}
    whole = run("grpo", env_config(talker_dir, tmp_path, "whole", **common), **QUIET)
    with pytest.raises(Crash):
        run("grpo", env_config(talker_dir, tmp_path, "split", **common), callbacks=[crash_at(3)], **QUIET)
    run("grpo", env_config(talker_dir, tmp_path, "split", **common), resume=True, **QUIET)
    rows_a, rows_b = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [1, 2, 3] and whole.history
    for ra, rb in zip(rows_a, rows_b):
        assert ra["reward/mean"] == pytest.approx(rb["reward/mean"], abs=1e-9)
        assert ra["episode/turns"] == rb["episode/turns"] and ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)

    from alignkit.train.online.ppo import PPOMethod

    seen = []
    real = PPOMethod.advantages

    def spy(self, samples, n):
        real(self, samples, n)
        seen.extend(samples)

    PPOMethod.advantages = spy
    try:
        ppo = env_config(talker_dir, tmp_path, "ppo", "ppo", train={"max_steps": 1},
                         method={"value": "shared", "iterations": 1})  # fmt: skip
        run("ppo", ppo, **QUIET)
    finally:
        PPOMethod.advantages = real
    multi = [s for s in seen if 0 in s.action_mask]
    assert multi
    for s in multi:
        assert all(a == 0.0 and r == 0.0 for a, r, m in zip(s.advantages, s.returns, s.action_mask) if not m)
        assert any(a != 0.0 for a, m in zip(s.advantages, s.action_mask) if m)


def test_bad_environment_configs(talker_dir, tmp_path):
    with pytest.raises(ConfigError, match="rollout.max_turns"):
        env_config(talker_dir, tmp_path, "a", rollout={"max_turns": 0})
    with pytest.raises(UserError, match="no module named"):
        run("grpo", env_config(talker_dir, tmp_path, "b", rollout={"environment": "nowhere:Env"}), **QUIET)
    assert not (tmp_path / "b" / "model.safetensors").exists()


def test_the_tool_demo_sorts_wrong_answers_and_builds_its_tool_free_arm():
    """The demo's error breakdown from graded episodes, and its tool-free arm: the same config without the
    environment, graded by the math verifier (the whole recipe runs in `alignkit demo --method tools`, ~20 min)."""
    from types import SimpleNamespace

    from alignkit.data.readers import builtin_path
    from alignkit.recipes.demo_tools import error_kinds, tool_free_overrides
    from alignkit.train import make_config

    def record(right: bool, calls: int, result: str | None, said: str) -> dict:
        transcript = "<tool_call>x</tool_call><|im_end|>\n" + (
            f"<|im_start|>tool\n{result}<|im_end|>\n" if result else ""
        )
        return {"rewards": [float(right)], "tool_calls": [calls], "transcripts": [transcript], "extracted": [said]}

    records = [record(True, 1, "84", "84"), record(False, 1, "12", "12"), record(False, 1, "12", "13"),
               record(False, 0, None, "5"), record(False, 1, "7", None)]  # fmt: skip
    assert error_kinds(SimpleNamespace(records=records)) == {
        "right": 1, "wrong expression": 1, "misread result": 2, "no tool call": 1}  # fmt: skip
    tools = make_config("grpo", str(builtin_path("demo_tools.yaml")))
    plain = make_config("grpo", str(builtin_path("demo_tools.yaml")), tool_free_overrides(tools))
    assert plain.rollout.environment is None and plain.method.rewards == ["math"]
    assert (plain.rollout.prompts_per_step, plain.rollout.samples_per_prompt, plain.train.max_steps,
            plain.train.learning_rate, plain.rollout.temperature) == (tools.rollout.prompts_per_step,
            tools.rollout.samples_per_prompt, tools.train.max_steps, tools.train.learning_rate,
            tools.rollout.temperature)  # fmt: skip
