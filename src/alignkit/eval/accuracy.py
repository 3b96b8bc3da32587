"""Math word-problem evaluation: sample completions, grade them with the math verifier, report accuracy.

    records (prompt + gold ``answer``) -> prompts through the chat template (as training sees them) -> ``samples``
    completions each (greedy by default) -> ``rewards.verifiers.math.grade`` -> accuracy (pass@1) with a 95% Wilson
    interval, pass@k, per-category accuracy, no-answer rate, mean completion length.

The Wilson interval counts prompts, not completions: with k > 1 samples the ``k`` samples of a prompt are
correlated, and ``accuracy * n`` successes in ``n`` trials bounds the variance of the mean from above.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data import PromptExample, read_records, to_prompt, tokenize_prompts, validate_records
from alignkit.data.formats import InvalidRecord
from alignkit.errors import DataError, UserError
from alignkit.generation.ready import ready_sampler
from alignkit.generation.sampler import Completion, SamplingParams
from alignkit.rewards.verifiers.math import extract_gold, grade
from alignkit.stats import pass_at_k, wilson_interval


@dataclass
class MathEvalResult:
    """Scores of one evaluation. ``accuracy``: mean reward over all completions (pass@1); ``interval``: its 95%
    Wilson interval over prompts; ``pass_at_k``: {1: ..., k: ...}; ``per_category``: category -> {n, accuracy};
    ``no_answer``: share of completions without an extractable answer; ``records``: one dict per prompt."""

    n: int
    samples: int
    temperature: float
    accuracy: float
    interval: tuple[float, float]
    pass_at_k: dict[int, float]
    per_category: dict[str, dict[str, float]]
    no_answer: float
    mean_length: float  # completion tokens, EOS included
    truncated: float  # share of completions cut at max_new_tokens
    seconds: float  # wall time: tokenize, sample, grade
    records: list[dict] = field(default_factory=list, repr=False)
    tool_use: float | None = None  # in an environment: share of episodes with a successful tool call
    turns: float | None = None  # in an environment: mean model turns per episode

    def summary(self) -> dict:
        """All scores as a flat, JSON-ready dict (no records)."""
        return {
            "n": self.n,
            "samples": self.samples,
            "temperature": self.temperature,
            "accuracy": self.accuracy,
            "interval_low": self.interval[0],
            "interval_high": self.interval[1],
            **{f"pass@{k}": v for k, v in self.pass_at_k.items()},
            **{f"accuracy/{c}": v["accuracy"] for c, v in self.per_category.items()},
            "no_answer": self.no_answer,
            "mean_length": self.mean_length,
            "truncated": self.truncated,
            "seconds": self.seconds,
            **({"tool_use": self.tool_use, "turns": self.turns} if self.tool_use is not None else {}),
        }

    def lines(self) -> list[str]:
        """The scores as human-readable lines (what ``alignkit eval math`` prints)."""
        low, high = self.interval
        correct = sum(sum(r["rewards"]) for r in self.records)
        decoding = "greedy" if self.temperature == 0 else f"temperature {self.temperature:g}"
        over = f"over the {self.n} prompts (their samples are not independent)" if self.samples > 1 else ""
        out = [
            f"{self.n} prompts x {self.samples} sample(s), {decoding}",
            f"accuracy {self.accuracy:.4f} ({correct:g} of {self.n * self.samples} completions correct), "
            f"95% Wilson interval {over or f'over the {self.n} prompts'} [{low:.4f}, {high:.4f}]",
        ]
        if self.samples > 1:
            out.append("  ".join(f"pass@{k} {v:.4f}" for k, v in self.pass_at_k.items()))
        if self.per_category:
            out.append("per category: " + ", ".join(
                f"{c} {v['accuracy']:.3f} (n {v['n']:g})" for c, v in self.per_category.items()
            ))  # fmt: skip
        out.append(
            f"no answer {self.no_answer:.1%} of completions, mean length {self.mean_length:.1f} tokens "
            f"({self.truncated:.1%} cut at max-new-tokens), {self.seconds:.1f} s"
        )
        if self.tool_use is not None:
            out.append(f"episodes: {self.turns:.2f} model turns on average, {self.tool_use:.1%} used a tool")
        return out


def check_sampling(samples: int, temperature: float) -> None:
    """Refuse sampling settings that cannot give a meaningful evaluation."""
    if samples < 1:
        raise UserError(f"samples is {samples}. Fix: sample at least 1 completion per prompt (--samples 1)")
    if temperature < 0:
        raise UserError(f"temperature is {temperature}. Fix: use 0 (greedy) or a positive temperature")
    if temperature == 0 and samples > 1:
        raise UserError(
            f"temperature 0 (greedy) with {samples} samples: all samples of a prompt would be identical, so pass@k "
            "would equal pass@1. Fix: sample with a positive temperature (e.g. --temperature 1.0) or use --samples 1"
        )


def load_math_records(
    data: str | Path | list, prompt_field: str = "prompt", template: str | None = None, limit: int | None = None
) -> list[PromptExample]:
    """Validated prompt examples with a gold ``answer``, the first ``limit`` records only when given.

    ``data``: a path or ``builtin:NAME``, a list of records, a list of ``(source, record)`` pairs, or
    ``PromptExample``s (kept as they are). Bad records -> one ``DataError`` listing ``file:line: field``."""
    if limit is not None and limit < 1:
        raise UserError(f"limit is {limit}. Fix: evaluate at least 1 record, or leave the limit off")
    if isinstance(data, list) and data and all(isinstance(x, PromptExample) for x in data):
        return data[:limit]  # validated already
    if isinstance(data, (str, Path)):
        records = read_records(str(data))
    else:
        records = [r if isinstance(r, tuple) else (f"records[{i}]", r) for i, r in enumerate(data)]
    if limit is not None:
        records = records[:limit]
    if not records:
        raise UserError(f"{data if isinstance(data, (str, Path)) else 'records'}: no records. Fix: give some records")

    def convert(record: Any, source: str) -> PromptExample:
        if isinstance(record, dict) and record.get(prompt_field) is None:
            others = ", ".join(k for k, v in record.items() if isinstance(v, str)) or "none"
            raise InvalidRecord(prompt_field, f"is missing (text fields here: {others}); name the field that "
                                "holds the prompt (--prompt-field, prompt_field=)")  # fmt: skip
        example = to_prompt(record, source, prompt_field, template)
        if extract_gold(record.get("answer")) is None:
            found = "is missing" if record.get("answer") is None else f"is {record['answer']!r}"
            raise InvalidRecord("answer", f"{found}; give the gold answer (a number, LaTeX, or a solution ending "
                                "'#### N')")  # fmt: skip
        return example

    examples, problems = validate_records(records, convert, on_invalid="skip")
    if problems:
        listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(
            f"{len(problems)} invalid record(s):\n  {listed}\nFix: give every record its prompt in '{prompt_field}' "
            "(or name the field: --prompt-field) and its gold answer in 'answer'"
        )
    return examples


def evaluate_math(
    model,
    tokenizer,
    records_or_path: str | Path | list,
    samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    *,
    prompt_field: str = "prompt",
    prompt_template: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    chat: bool = True,
    max_rows: int = 64,
    mixed_precision: str = "auto",
    environment: str | None = None,
    environment_args: dict | None = None,
    max_turns: int = 4,
) -> MathEvalResult:
    """Evaluate ``model`` (a causal LM or PEFT model; used as it is, its device kept) on math records.

    ``tokenizer``: a HF tokenizer or an alignkit ``Tokenizer``. ``records_or_path``: see ``load_math_records``.
    Prompt i samples with seed ``seed + i``. ``mixed_precision``: auto (bf16 autocast on GPUs / CPUs with native
    bf16), bf16, or fp32. ``environment``: evaluate in multi-turn episodes of this environment (as
    ``rollout.environment`` trains; e.g. ``calculator``), at most ``max_turns`` model turns of ``max_new_tokens``
    each; the final answer is the episode's last model message, and ``tool_use`` the share of episodes with a
    successful tool call.
    """
    start = time.perf_counter()
    check_sampling(samples, temperature)
    examples = load_math_records(records_or_path, prompt_field, prompt_template, limit)
    ready = ready_sampler(model, tokenizer, mixed_precision, max_rows)
    items, _ = tokenize_prompts(examples, ready.tok, max_prompt_length=10**9, chat=chat)
    _check_lengths(model, items, max_new_tokens)
    params = SamplingParams(n=samples, max_new_tokens=max_new_tokens, temperature=temperature)
    seeds = [seed + i for i in range(len(items))]
    if environment:
        result = _episodes(ready, examples, params, seeds, environment, environment_args, max_turns)
    else:
        result = _score(examples, ready.sample([it.prompt_ids for it in items], params, seeds), samples, temperature)
    result.seconds = time.perf_counter() - start
    return result


def _episodes(ready, examples, params: SamplingParams, seeds, environment: str, args, max_turns: int):
    """Episodes of ``environment`` graded on each one's last model message; records carry the transcript."""
    from alignkit.generation.episodes import TurnLimits
    from alignkit.rewards.episode_runner import EpisodeRunner

    if max_turns < 1:
        raise UserError(f"max_turns is {max_turns}. Fix: allow at least 1 model turn")
    limits = TurnLimits(max_turns, params.max_new_tokens, max_turns * (params.max_new_tokens + 64))
    runner = EpisodeRunner(environment, args, ready.tok, limits)
    try:
        batch = runner.run(ready, [{**ex.columns, "prompt": ex.prompt} for ex in examples], params, seeds)
    finally:
        runner.close()
    outputs = [
        [Completion(ep.turn_tokens[-1] if ep.turn_tokens else [], [], ep.finish_reason, text)
         for ep, text in zip(group, texts)]
        for group, texts in zip(batch.episodes, batch.final_text)
    ]  # fmt: skip
    result = _score(examples, outputs, params.n, params.temperature)
    for record, group, calls in zip(result.records, batch.episodes, batch.tool_calls):
        record["transcripts"] = [ready.tok.hf.decode(ep.tokens, skip_special_tokens=False) for ep in group]
        record["tool_calls"], record["turns"] = list(calls), [ep.turns for ep in group]
    result.tool_use = sum(c > 0 for group in batch.tool_calls for c in group) / max(1, len(examples) * params.n)
    result.turns = sum(ep.turns for group in batch.episodes for ep in group) / max(1, len(examples) * params.n)
    return result


def _check_lengths(model, items: list, max_new_tokens: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for it in items:
        if limit and len(it.prompt_ids) + max_new_tokens > limit:
            raise UserError(
                f"{it.source}: {len(it.prompt_ids)} prompt tokens + {max_new_tokens} new tokens exceed the model's "
                f"{limit} positions. Fix: lower --max-new-tokens or shorten the prompt"
            )


def _score(examples: list[PromptExample], outputs: list, samples: int, temperature: float) -> MathEvalResult:
    records, correct, by_category = [], [], {}
    lengths, truncated, no_answer = [], 0, 0
    for ex, completions in zip(examples, outputs):
        texts = [c.text for c in completions]
        grades = [grade(t, ex.columns.get("answer")) for t in texts]
        rewards = [g.reward or 0.0 for g in grades]
        correct.append([r == 1.0 for r in rewards])
        lengths += [len(c.token_ids) for c in completions]
        truncated += sum(c.finish_reason == "length" for c in completions)
        no_answer += sum(g.extracted is None for g in grades)
        category = ex.columns.get("category")
        if category is not None:
            by_category.setdefault(str(category), []).append(sum(rewards) / samples)
        records.append({
            "source": ex.source, "prompt": ex.prompt, "answer": ex.columns.get("answer"), "gold": grades[0].gold,
            **({"category": category} if category is not None else {}),
            "completions": texts, "extracted": [g.extracted for g in grades], "rewards": rewards,
        })  # fmt: skip
    n = len(examples)
    accuracy = pass_at_k(correct, 1)
    ks = sorted({1, samples})
    return MathEvalResult(
        n=n, samples=samples, temperature=temperature, accuracy=accuracy,
        interval=wilson_interval(accuracy * n, n), pass_at_k={k: pass_at_k(correct, k) for k in ks},
        per_category={c: {"n": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(by_category.items())},
        no_answer=no_answer / max(1, n * samples), mean_length=sum(lengths) / max(1, len(lengths)),
        truncated=truncated / max(1, n * samples), seconds=0.0, records=records,
    )  # fmt: skip
