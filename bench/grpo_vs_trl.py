"""Side-by-side GRPO benchmark: TRL 1.16 ``GRPOTrainer`` vs alignkit GRPO, same model, prompts, batch and settings.

    .venv/bin/pip install -q -c constraints.txt -e ".[bench]"   # TRL (bench only; alignkit never imports it)
    .venv/bin/python bench/grpo_vs_trl.py                       # P=4 x G=8, 64 new tokens, 4 steps, bf16 if native
    .venv/bin/python bench/grpo_vs_trl.py --dtype fp32          # the fp32 pair (-> bench/results/..._fp32.json)
    .venv/bin/python bench/grpo_vs_trl.py --steps 1 --prompts 2 --group 2 --max-new-tokens 16 --out /tmp/smoke.json

Each case (``--cases trl,alignkit``) runs in its own process (this script with ``--case``), so its peak RSS is its
own; a case that crashes or times out is reported with the tail of its stderr and the others still run.

Batch shape, one optimizer step per generation (P = ``--prompts``, G = ``--group``, B = ``--batch-size``, completions
per forward, the same for both; default gcd(8, P x G), 8 being TRL's default per_device_train_batch_size):

  alignkit                                  TRL 1.16 GRPOConfig
  rollout.prompts_per_step = P              generation_batch_size = P x G completions (derived, see below)
  rollout.samples_per_prompt = G            num_generations = G
  train.batch_size = B (completions/fwd)    per_device_train_batch_size = B (completions per forward, not prompts)
  method.iterations = 1, minibatches = 1    gradient_accumulation_steps = P x G / B, steps_per_generation unset
  (accumulation derived: P x G / B)         (TRL then sets steps_per_generation = gradient_accumulation_steps and
                                            generation_batch_size = B x 1 process x steps_per_generation = P x G),
                                            num_iterations = 1

So both sample P x G completions from the current policy, then take exactly one optimizer step over all of them in
P x G / B micro-batches of B completions; neither recomputes old log-probs (TRL skips that forward when
gradient_accumulation_steps % (steps_per_generation x num_iterations) == 0; alignkit when iterations x minibatches
= 1), so the importance ratio is 1 and the clipped surrogate is REINFORCE with a group baseline in both.

Shared settings: the embedded SmolLM2-135M-Instruct (its converted safetensors dir, loaded in fp32 by both: fp32
master weights), full fine-tuning, no gradient checkpointing (TRL's default is on: turned off, alignkit's default is
off), max ``--max-new-tokens`` new tokens, sampling temperature ``--temperature`` with top_p 1, top_k 0, no min_p;
beta 0 (no reference model: TRL's default), clip epsilon 0.2 both sides (TRL epsilon=0.2, epsilon_high unset;
alignkit clip_low = clip_high = 0.2), group-std reward scaling (TRL scale_rewards="group", alignkit
method.scale_rewards=group: both (r - mean) / (unbiased std + 1e-4)), loss normalized by the number of completion
tokens of the whole step (TRL loss_type="dapo", its default; alignkit method.loss_aggregation=token_mean, its
default), no overlong masking (TRL mask_truncated_completions=False, alignkit method.overlong=none); AdamW betas
0.9/0.999, weight decay 0, constant lr (``--lr``, TRL's GRPO default 1e-6) with no warmup, max_grad_norm 1.0, seed 42;
the prompts in file order (TRL shuffle_dataset=False, alignkit train.shuffle=false), so both see the same P prompts
at each step. The optimizer is each library's own: TRL's default ``adamw_torch_fused``, alignkit's fused
``torch.optim.AdamW`` (same update rule). Precision: ``--dtype auto`` = bf16 autocast where the CPU has native bf16
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: alignkit model.dtype=auto, TRL bf16=True), else fp32;
``--dtype fp32`` / ``bf16`` force it for both.

Prompts: ``src/alignkit/resources/arithmetic_train.jsonl`` when it exists (``prompt`` or ``question`` + ``answer``),
else the 64 arithmetic word problems below, in order; the first P x steps are used (cycled if there are fewer). Both
use the chat template: TRL gets conversational prompts ``[{"role": "user", "content": q}]`` and applies the
template; alignkit gets the text and makes it one user message (rollout.chat=true). The parent checks that both
tokenize every prompt to the same ids, and each case reports the ids of the first prompt it actually fed. Reward:
``alignkit.rewards.verifiers.math:math_reward`` for both (1 / 0 on the last number / marked answer vs the
``answer`` column).
TRL passes conversational completions as message lists (``[{"role": "assistant", "content": ...}]``) and dataset
columns as keyword arguments: a small wrapper hands the text to the same function. alignkit runs it in the training
process (method.reward_workers=0, like TRL; ``--reward-workers`` changes that).

TRL gotchas handled here: on a machine without a GPU TRL needs ``use_cpu=True`` (``bf16=True``, TRL's default, is
refused otherwise); ``report_to="none"`` (transformers 5's default, set explicitly), ``save_strategy="no"``,
``logging_steps=1`` (TRL's default is 10), ``use_vllm=False`` (the default; generation by ``model.generate``),
``gradient_checkpointing=False`` (TRL's default is True), ``disable_dropout=True`` (alignkit disables dropout; the
model has none anyway), ``remove_unused_columns=False`` (keeps ``answer`` for the reward; TRL's default). TRL 1.16
has no ``max_prompt_length`` any more (prompts are never truncated); alignkit's data.max_length leaves ample room
(``--max-prompt-length`` tokens) and the parent checks that every prompt fits in it. ``max_completion_length`` is TRL's
max new tokens. With report_to="none" TRL's ``profiling_context`` timings (``profiling/Time taken: ...``) are not
logged anywhere, so this script times TRL's generation, reward and rollout itself by wrapping
``_generate_single_turn``, ``_calculate_rewards`` and ``_generate_and_score_completions`` (nothing else changes).

Differences that remain, each library's own behaviour (reported, not corrected): TRL generates the P x G rows with
``model.generate`` (each prompt repeated G times, left-padded), then pads the whole generation batch to its longest
prompt and longest completion and trains on slices of it (shuffled across micro-batches), so its forwards also run
over padding; alignkit pads each micro-batch on its own. Precision is what each library does; the script reports
the dtype of the first MLP's output during generation and during training, per case: under bf16 both generate and
train in bf16 autocast (accelerate wraps TRL's prepared model's forward in autocast, so ``model.generate`` runs in
it too). TRL's ``on_step_end`` fires before its per-step logging, so that (small) work lands in the next step's span;
alignkit's callbacks run after its logging.

Experiments: ``--alignkit-set KEY=VALUE`` adds an alignkit override (e.g. train.reuse_cpu_memory=false),
``--trl-set KEY=VALUE`` a GRPOConfig argument (e.g. gradient_checkpointing=true, TRL's default); both are recorded.

Measured per case: wall seconds per step between consecutive optimizer-step ends, steps 2..N (step 1 is warm-up:
first generate / backward / optimizer-state allocation); completion tokens per second of generation (completion
tokens generated, EOS included, over the generation time) and per wall second (over the step time); training
tokens/s = prompt + completion tokens of the step's P x G samples (the attention-mask sum, no padding) per step
second; the step split into generate / reward / train (TRL: its own step time minus its rollout time; alignkit:
``time/*`` from metrics.jsonl); peak RSS of the case's process (``resource.getrusage``; the JSON also has the
largest child's peak, which for a fork + exec helper counts the parent's pages at fork time, so it is not added);
setup = from the start of the case's process (imports included) until step 1 begins, imports also on their own.
Correctness (cheap): step-1 mean reward of both (same model and prompts, independent samples: they should agree
within sampling noise; the binomial standard error is printed), mean completion length at step 1, and loss /
grad norm per step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()  # the case's process start, for setup time (imports included)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "grpo_vs_trl.json"
ARITHMETIC = REPO / "src" / "alignkit" / "resources" / "arithmetic_train.jsonl"
MARK = "@@bench-result "
REWARD = "alignkit.rewards.verifiers.math:math_reward"
GOAL_SPEEDUP, GOAL_RSS = 3.0, 1.0  # TRL s/step / alignkit s/step >= 3; alignkit RSS / TRL RSS <= 1

# (template, operands, answer function): 8 templates x 8 operand pairs = 64 prompts, answers computed below
_TEMPLATES = (
    ("Tom has {a} apples and buys {b} more. How many apples does Tom have now?", lambda a, b: a + b),
    ("A shelf holds {a} books. {b} books are taken away. How many books are left on the shelf?", lambda a, b: a - b),
    ("There are {a} boxes with {b} pencils in each box. How many pencils are there in total?", lambda a, b: a * b),
    ("Sara shares {p} stickers equally among {b} friends. How many stickers does each friend get?", lambda a, b: a),
    (
        "A train travels {a} km in the morning and {b} km in the afternoon. How many km does it travel in all?",
        lambda a, b: a + b,
    ),
    ("A baker made {a} cookies and sold {b} of them. How many cookies does the baker have left?", lambda a, b: a - b),
    (
        "A garden has {a} rows of flowers with {b} flowers in each row. How many flowers are in the garden?",
        lambda a, b: a * b,
    ),
    (
        "Ben saves {a} dollars a week for {b} weeks, then spends 5 dollars. How many dollars does he have left?",
        lambda a, b: a * b - 5,
    ),
)
_OPERANDS = ((12, 7), (25, 9), (8, 6), (31, 14), (9, 4), (46, 18), (7, 3), (53, 27))


def inline_prompts() -> list[dict]:
    """64 arithmetic word problems with integer answers (``prompt``, ``answer``), in a fixed order."""
    out = []
    for a, b in _OPERANDS:
        for template, answer in _TEMPLATES:
            prompt = template.format(a=a, b=b, p=a * b)
            out.append({"prompt": prompt + " Give the final answer as a number.", "answer": str(answer(a, b))})
    return out


def load_prompts(path: Path = ARITHMETIC) -> tuple[list[dict], str]:
    """(records with ``prompt`` and ``answer``, where they came from)."""
    if path.is_file():
        records = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            prompt = r.get("prompt", r.get("question"))
            if isinstance(prompt, str) and r.get("answer") is not None:
                records.append({"prompt": prompt, "answer": str(r["answer"])})
        if records:
            return records, str(path.relative_to(REPO))
    return inline_prompts(), "inline (bench/grpo_vs_trl.py)"


# ------------------------------------------------------------------------------------------------ children


def child(spec: dict) -> dict:
    """Runs one case in this process and returns its raw measurements."""
    import resource

    import torch

    out = run_trl(spec) if spec["case"] == "trl" else run_alignkit(spec)
    out.update(
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        children_peak_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        threads=torch.get_num_threads(),
    )
    return out


class DtypeProbe:
    """Records the dtype of the first MLP's output, by phase (generate / train): what precision each runs in."""

    def __init__(self, model):
        self.phase, self.seen = "setup", {}  # alignkit's setup checks its batch layout with one fp32 forward
        target = next((m for n, m in model.named_modules() if n.endswith("mlp.down_proj")), None)
        if target is not None:
            target.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.seen.setdefault(self.phase, str(output.dtype).replace("torch.", ""))


def run_trl(spec: dict) -> dict:
    import torch
    import yaml
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.rewards.verifiers.math import math_reward

    s = spec["settings"]
    t_imports = time.perf_counter() - T_START

    def math_reward_messages(prompts, completions, answer=None, **kwargs):
        """alignkit's math_reward on TRL's conversational completions (lists of messages)."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return math_reward(prompts, texts, answer=answer)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.begin, self.end = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

    class BenchGRPOTrainer(GRPOTrainer):
        """Times generation, reward and the whole rollout and records what was generated; nothing else changes."""

        def __init__(self, *a, **k):
            self.bench = {
                k: [] for k in ("generate_s", "reward_s", "rollout_s", "prompt_lens", "completion_lens", "rewards")
            }
            self.bench["first_prompt_ids"] = None
            super().__init__(*a, **k)
            self.probe = DtypeProbe(self.model)

        def _generate_single_turn(self, prompt_ids, *a, **k):
            self.probe.phase = "generate"
            t = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *a, **k)
            self.bench["generate_s"].append(time.perf_counter() - t)
            self.probe.phase = "train"
            self.bench["prompt_lens"].append([len(p) for p in prompt_ids])
            self.bench["completion_lens"].append([len(c) for c in out[0]])
            if self.bench["first_prompt_ids"] is None:
                self.bench["first_prompt_ids"] = list(prompt_ids[0])
            return out

        def _calculate_rewards(self, *a, **k):
            t = time.perf_counter()
            out = super()._calculate_rewards(*a, **k)
            self.bench["reward_s"].append(time.perf_counter() - t)
            self.bench["rewards"].append([float(x) for x in out.sum(-1).tolist()])
            return out

        def _generate_and_score_completions(self, *a, **k):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(*a, **k)
            self.bench["rollout_s"].append(time.perf_counter() - t)
            return out

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(s["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(s["model_dir"])
    records = [json.loads(line) for line in Path(s["data"]).read_text().splitlines()]
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in records]
    )
    completions = s["prompts"] * s["group"]
    kwargs = dict(
        output_dir=spec["workdir"],
        use_cpu=True,
        bf16=s["precision"] == "bf16",
        fp16=False,
        # batch shape: P x G completions per generation, one optimizer step over them in micro-batches of B
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=completions // s["batch_size"],
        num_generations=s["group"],
        num_iterations=1,
        max_steps=s["steps"],
        # sampling
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=1.0,
        top_k=0,
        min_p=None,
        use_vllm=False,
        # loss
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        mask_truncated_completions=False,
        # optimizer
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        disable_dropout=True,
        shuffle_dataset=False,
        remove_unused_columns=False,
        seed=s["seed"],
        data_seed=s["seed"],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )
    kwargs.update({k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in s["trl_set"])})
    config = GRPOConfig(**kwargs)
    assert config.generation_batch_size == completions and config.steps_per_generation == (
        config.gradient_accumulation_steps
    ), (config.generation_batch_size, config.steps_per_generation, config.gradient_accumulation_steps)
    timer = StepTimes()
    trainer = BenchGRPOTrainer(
        model=model,
        reward_funcs=[math_reward_messages],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    b = trainer.bench
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    logs = [r for r in trainer.state.log_history if "loss" in r]
    steps = len(timer.end)
    return {
        "framework": "trl",
        "mixed_precision": trainer.accelerator.mixed_precision,
        "compute_dtype": trainer.probe.seen,
        "optimizer": f"{type(optimizer).__name__}(fused={optimizer.defaults.get('fused')})",
        "config": {
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "generation_batch_size": config.generation_batch_size,
            "steps_per_generation": config.steps_per_generation,
            "num_generations": config.num_generations,
            "loss_type": config.loss_type,
            "scale_rewards": config.scale_rewards,
            "epsilon": config.epsilon,
            "epsilon_high": trainer.epsilon_high,
            "optim": str(config.optim),
        },
        "imports_s": t_imports,
        "first_step_begin_s": timer.begin[0] - T_START,
        "load_begin_s": t0 - T_START,
        "step_ends_s": [t - T_START for t in timer.end],
        "step_begins_s": [t - T_START for t in timer.begin],
        "generate_s": b["generate_s"][:steps],
        "reward_s": b["reward_s"][:steps],
        "rollout_s": b["rollout_s"][:steps],
        "prompt_lens": b["prompt_lens"][:steps],
        "completion_lens": b["completion_lens"][:steps],
        "rewards": b["rewards"][:steps],
        "first_prompt_ids": b["first_prompt_ids"],
        "metrics": [
            {
                k: float(r[k])
                for k in (
                    "loss",
                    "grad_norm",
                    "reward",
                    "reward_std",
                    "entropy",
                    "completions/mean_length",
                    "learning_rate",
                )
                if k in r
            }
            for r in logs
        ],
    }


def run_alignkit(spec: dict) -> dict:
    from alignkit.data.jsonl import read_jsonl
    from alignkit.train import fit, make_config, prepare

    s = spec["settings"]
    t_imports = time.perf_counter() - T_START
    out = spec["workdir"]
    overrides = [
        f"model.name={s['model_dir']}",
        f"model.dtype={s['precision']}",
        "model.device=cpu",
        f"data.train={s['data']}",
        f"data.max_length={s['max_prompt_length'] + s['max_new_tokens']}",
        f"data.max_prompt_length={s['max_prompt_length']}",
        # batch shape: P prompts x G samples, one pass, one minibatch: one optimizer step per generation
        f"rollout.prompts_per_step={s['prompts']}",
        f"rollout.samples_per_prompt={s['group']}",
        f"rollout.max_new_tokens={s['max_new_tokens']}",
        f"rollout.temperature={s['temperature']}",
        "rollout.top_p=1.0",
        "rollout.top_k=0",
        "rollout.min_p=0.0",
        "rollout.chat=true",
        "method.iterations=1",
        "method.minibatches=1",
        f"train.batch_size={s['batch_size']}",
        # loss
        f"method.rewards={json.dumps([REWARD])}",
        f"method.reward_workers={s['reward_workers']}",
        "method.beta=0.0",
        "method.clip_low=0.2",
        "method.clip_high=0.2",
        "method.scale_rewards=group",
        "method.loss_aggregation=token_mean",
        "method.overlong=none",
        "method.dynamic_sampling=false",
        # optimizer
        f"train.output_dir={out}",
        f"train.max_steps={s['steps']}",
        f"train.learning_rate={s['lr']}",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0",
        "train.warmup_steps=0",
        "train.weight_decay=0",
        "train.adam_betas=[0.9, 0.999]",
        "train.max_grad_norm=1.0",
        "train.gradient_checkpointing=false",
        f"train.seed={s['seed']}",
        "train.shuffle=false",
        "train.logging_steps=1",
        *s["alignkit_set"],
    ]
    log = lambda *a, **k: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    p = prepare("grpo", make_config("grpo", overrides=overrides), log=log)
    probe = DtypeProbe(p.model)
    rec = {"prompt_lens": [], "completion_lens": [], "rewards": [], "first_prompt_ids": None}
    ends, own = [], []
    rollout = p.method.rollout

    def recording_rollout(module, items, step, sums):
        probe.phase = "generate"  # beta = 0, one pass: the rollout's only forwards are the sampler's
        samples = rollout(module, items, step, sums)
        probe.phase = "train"
        rec["prompt_lens"].append([len(x.prompt_ids) for x in samples])
        rec["completion_lens"].append([len(x.completion_ids) for x in samples])
        rec["rewards"].append([x.reward for x in samples])
        if rec["first_prompt_ids"] is None:
            rec["first_prompt_ids"] = list(items[0].prompt_ids)
        return samples

    def on_step(state, metrics):
        ends.append(time.perf_counter())
        own.append(metrics["seconds_per_step"])

    p.method.rollout = recording_rollout
    fit(p.method, p.cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, False, [on_step], p.log)
    rows = [r for r in read_jsonl(Path(out) / "metrics.jsonl") if "loss" in r]
    keys = (
        "loss",
        "grad_norm",
        "reward/mean",
        "reward/std",
        "entropy",
        "completion/length",
        "learning_rate",
        "time/generate",
        "time/reward",
        "time/reference",
        "time/train",
        "seconds_per_step",
        "tokens_per_second",
        "generation/tokens_per_second",
    )
    return {
        "framework": "alignkit",
        "mixed_precision": p.accelerator.mixed_precision,
        "compute_dtype": probe.seen,
        "optimizer": "AdamW(torch.optim, fused on CPU)",
        "config": {
            "train.batch_size": p.cfg.train.batch_size,
            "rollout.prompts_per_step": p.cfg.rollout.prompts_per_step,
            "rollout.samples_per_prompt": p.cfg.rollout.samples_per_prompt,
            "rollout.max_rows": p.cfg.rollout.max_rows,
            "method.loss_aggregation": p.cfg.method.loss_aggregation,
            "method.scale_rewards": p.cfg.method.scale_rewards,
            "method.reward_workers": p.cfg.method.reward_workers,
        },
        "imports_s": t_imports,
        "load_begin_s": t0 - T_START,
        "first_step_begin_s": ends[0] - own[0] - T_START,
        "step_ends_s": [t - T_START for t in ends],
        "step_begins_s": [t - o - T_START for t, o in zip(ends, own)],
        "generate_s": [r["time/generate"] for r in rows],
        "reward_s": [r["time/reward"] for r in rows],
        "train_s": [r["time/train"] for r in rows],
        "prompt_lens": rec["prompt_lens"],
        "completion_lens": rec["completion_lens"],
        "rewards": rec["rewards"],
        "first_prompt_ids": rec["first_prompt_ids"],
        "metrics": [{k: float(r[k]) for k in keys if k in r} for r in rows],
    }


# ---------------------------------------------------------------------------------------------------- parent


def run_case(name: str, settings: dict, timeout: float) -> dict:
    """Runs case ``name`` in a fresh process; returns its raw measurements or ``{"failed": ...}``."""
    workdir = tempfile.mkdtemp(prefix=f"bench-grpo-{name}-")
    try:
        spec = Path(workdir) / "spec.json"
        spec.write_text(json.dumps({"case": name, "settings": settings, "workdir": str(Path(workdir) / "run")}))
        env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
        env.update(
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            TQDM_DISABLE="1",
            PYTHONWARNINGS="ignore",
        )
        cmd = [sys.executable, __file__, "--case", name, "--spec", str(spec)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            return {"failed": f"timed out after {timeout:.0f} s", "stderr_tail": err[-3000:]}
        lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
        if proc.returncode != 0 or not lines:
            return {"failed": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:] + proc.stdout[-1000:]}
        raw = json.loads(lines[-1][len(MARK) :])
        raw["process_s"] = time.perf_counter() - t
        return raw
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def derive(raw: dict) -> dict:
    """Per-case numbers: means over the timed steps (2..N; step 1 alone when N = 1)."""
    ends = raw["step_ends_s"]
    n = len(ends)
    durations = [ends[0] - raw["first_step_begin_s"]] + [b - a for a, b in zip(ends, ends[1:])]
    timed = list(range(1, n)) if n > 1 else [0]
    span = sum(durations[i] for i in timed)
    completion_tokens = [sum(c) for c in raw["completion_lens"]]
    train_tokens = [sum(p) + sum(c) for p, c in zip(raw["prompt_lens"], raw["completion_lens"])]
    gen = sum(raw["generate_s"][i] for i in timed)
    reward = sum(raw["reward_s"][i] for i in timed)
    if "train_s" in raw:  # alignkit: the optimizer passes, from its metrics
        train = sum(raw["train_s"][i] for i in timed)
    else:  # TRL: its step (on_step_begin .. on_step_end) minus its rollout
        train = sum(raw["step_ends_s"][i] - raw["step_begins_s"][i] - raw["rollout_s"][i] for i in timed)
    first_rewards = [r for r in raw["rewards"][0] if r is not None and not math.isnan(r)]
    return {
        "steps": n,
        "timed_steps": [i + 1 for i in timed],
        "seconds_per_step": span / len(timed),
        "step_seconds": durations,
        "generate_s_per_step": gen / len(timed),
        "reward_s_per_step": reward / len(timed),
        "train_s_per_step": train / len(timed),
        "completion_tokens_per_step": completion_tokens,
        "generation_tokens_per_second": sum(completion_tokens[i] for i in timed) / max(gen, 1e-9),
        "completion_tokens_per_second": sum(completion_tokens[i] for i in timed) / span,
        "train_tokens_per_step": train_tokens,
        "train_tokens_per_second": sum(train_tokens[i] for i in timed) / span,
        "train_phase_tokens_per_second": sum(train_tokens[i] for i in timed) / max(train, 1e-9),
        "peak_rss_mb": raw["peak_rss_mb"],
        "children_peak_rss_mb": raw["children_peak_rss_mb"],
        "imports_s": raw["imports_s"],
        "setup_s": raw["first_step_begin_s"],
        "first_step_s": durations[0],
        "reward_step1": _mean(first_rewards),
        "rewards_scored_step1": len(first_rewards),
        "reward_per_step": [_mean([r for r in rs if r is not None and not math.isnan(r)]) for rs in raw["rewards"]],
        "completion_length_step1": statistics.mean(raw["completion_lens"][0]),
        "truncated_step1": sum(c >= raw.get("max_new_tokens", 10**9) for c in raw["completion_lens"][0]),
        "loss_per_step": [m.get("loss") for m in raw["metrics"]],
        "grad_norm_per_step": [m.get("grad_norm") for m in raw["metrics"]],
    }


def _mean(xs: list) -> float:
    return statistics.mean(xs) if xs else float("nan")


def print_report(cases: dict, settings: dict) -> dict:
    ok = {k: v for k, v in cases.items() if "derived" in v}
    print("\n### Throughput (steps 2..N timed, step 1 is warm-up)\n")
    print(
        "| case | precision (gen / train) | s/step | generate s | reward s | train s | gen tokens/s "
        "| completion tokens/s | train tokens/s | peak RSS MB | setup s (imports) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, c in cases.items():
        if "derived" not in c:
            print(f"| {name} | FAILED: {c['raw']['failed']} |" + " |" * 9)
            continue
        d, raw = c["derived"], c["raw"]
        dt = raw["compute_dtype"]
        print(
            f"| {name} | {dt.get('generate', '?')} / {dt.get('train', '?')} | {d['seconds_per_step']:.2f} "
            f"| {d['generate_s_per_step']:.2f} | {d['reward_s_per_step']:.3f} | {d['train_s_per_step']:.2f} "
            f"| {d['generation_tokens_per_second']:.1f} | {d['completion_tokens_per_second']:.1f} "
            f"| {d['train_tokens_per_second']:.0f} | {d['peak_rss_mb']:.0f} "
            f"| {d['setup_s']:.1f} ({d['imports_s']:.1f}) |"
        )
    ratios = {}
    if "trl" in ok and "alignkit" in ok:
        t, a = ok["trl"]["derived"], ok["alignkit"]["derived"]
        ratios = {
            "speedup_seconds_per_step": t["seconds_per_step"] / a["seconds_per_step"],
            "generation_tokens_per_second": a["generation_tokens_per_second"] / t["generation_tokens_per_second"],
            "train_tokens_per_second": a["train_tokens_per_second"] / t["train_tokens_per_second"],
            "train_phase_speedup": t["train_s_per_step"] / a["train_s_per_step"],
            "generate_phase_speedup": t["generate_s_per_step"] / a["generate_s_per_step"],
            "peak_rss": a["peak_rss_mb"] / t["peak_rss_mb"],
            "setup_speedup": t["setup_s"] / a["setup_s"],
        }
        ratios["meets_speed_goal"] = ratios["speedup_seconds_per_step"] >= GOAL_SPEEDUP
        ratios["meets_memory_goal"] = ratios["peak_rss"] <= GOAL_RSS
        print("\n### alignkit vs TRL\n")
        print(
            f"- seconds per step, TRL / alignkit: {ratios['speedup_seconds_per_step']:.2f}x "
            f"(goal >= {GOAL_SPEEDUP:g}x: {'met' if ratios['meets_speed_goal'] else 'NOT met'})"
        )
        print(
            f"- generation phase: {ratios['generate_phase_speedup']:.2f}x faster; generated tokens/s "
            f"{ratios['generation_tokens_per_second']:.2f}x; train phase {ratios['train_phase_speedup']:.2f}x "
            f"faster; train tokens/s {ratios['train_tokens_per_second']:.2f}x"
        )
        print(
            f"- peak RSS, alignkit / TRL: {ratios['peak_rss']:.2f} "
            f"(goal <= {GOAL_RSS:g}: {'met' if ratios['meets_memory_goal'] else 'NOT met'})"
        )
        print(f"- setup, TRL / alignkit: {ratios['setup_speedup']:.2f}x")
    print("\n### Correctness (step 1: same model, same prompts, independent samples)\n")
    print(
        "| case | mean reward step 1 | scored | mean completion length step 1 | reward per step | loss per step "
        "| grad norm per step |"
    )
    print("|---|---:|---:|---:|---|---|---|")
    for name, c in ok.items():
        d = c["derived"]

        def fmt(xs, spec=".3f"):
            return ", ".join("-" if x is None else format(x, spec) for x in xs)

        print(
            f"| {name} | {d['reward_step1']:.3f} | {d['rewards_scored_step1']} | {d['completion_length_step1']:.1f} "
            f"| {fmt(d['reward_per_step'])} | {fmt(d['loss_per_step'], '.4g')} | {fmt(d['grad_norm_per_step'])} |"
        )
    check = {}
    if "trl" in ok and "alignkit" in ok:
        t, a = ok["trl"]["derived"], ok["alignkit"]["derived"]
        n = settings["prompts"] * settings["group"]
        p = (t["reward_step1"] + a["reward_step1"]) / 2
        se = math.sqrt(max(p * (1 - p), 1e-12) * 2 / n)  # of the difference of two means of n Bernoulli samples
        diff = a["reward_step1"] - t["reward_step1"]
        same_prompts = ok["trl"]["raw"]["first_prompt_ids"] == ok["alignkit"]["raw"]["first_prompt_ids"]
        check = {
            "reward_diff": diff,
            "reward_diff_se": se,
            "consistent": abs(diff) <= 3 * se + 1e-9,
            "first_prompt_ids_identical": same_prompts,
        }
        print(
            f"\nstep-1 mean reward: alignkit {a['reward_step1']:.3f}, TRL {t['reward_step1']:.3f}, difference "
            f"{diff:+.3f} (binomial s.e. of the difference {se:.3f} over {n} samples each): "
            f"{'within 3 s.e.' if check['consistent'] else 'OUTSIDE 3 s.e.: check'}; first prompt fed: "
            f"{'identical ids' if same_prompts else 'DIFFERENT ids'} in both"
        )
        if t["reward_step1"] == a["reward_step1"] == 0:
            print("(both 0: too few / too short samples to say anything; use more --max-new-tokens)")
    return {"ratios": ratios, "correctness": check}


def check_prompts(records: list[dict], model_dir: str, max_prompt_length: int) -> dict:
    """Both tokenizations of every prompt used: alignkit's (text -> one user message) and TRL's chat template."""
    from transformers import AutoTokenizer

    from alignkit.data import Tokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    tok = Tokenizer(hf)
    lengths, different = [], []
    for i, r in enumerate(records):
        msg = {"role": "user", "content": r["prompt"]}
        a = tok.prompt_ids((msg,))
        t = hf.apply_chat_template([msg], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        lengths.append(len(a))
        if list(a) != list(t):
            different.append(i)
    if max(lengths) > max_prompt_length:
        raise SystemExit(f"a prompt has {max(lengths)} tokens, over --max-prompt-length {max_prompt_length}")
    return {
        "identical": not different,
        "different": different,
        "min": min(lengths),
        "max": max(lengths),
        "first_rendered": hf.decode(tok.prompt_ids(({"role": "user", "content": records[0]["prompt"]},))),
    }


def machine_info() -> dict:
    import torch
    import transformers

    info = {
        "cpu": platform.processor(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1].split()
                info["avx512_bf16"] = "avx512_bf16" in flags
                info["amx_bf16"] = "amx_bf16" in flags
                info["avx512f"] = "avx512f" in flags
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (= generations) per case; step 1 untimed")
    ap.add_argument("--prompts", type=int, default=4, help="P: prompts per step")
    ap.add_argument("--group", type=int, default=8, help="G: samples per prompt (TRL num_generations; >= 2)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, help="B: completions per forward (both); default gcd(8, P x G)")
    ap.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 autocast where the CPU has native bf16, else fp32",
    )
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-6, help="constant, no warmup (TRL's GRPO default)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--reward-workers", type=int, default=0, help="alignkit method.reward_workers (TRL: in-process)")
    ap.add_argument("--max-prompt-length", type=int, default=192, help="alignkit's prompt budget (never reached)")
    ap.add_argument("--alignkit-set", action="append", default=[], help="extra alignkit override KEY=VALUE")
    ap.add_argument("--trl-set", action="append", default=[], help="extra GRPOConfig argument KEY=VALUE (YAML value)")
    ap.add_argument("--cases", default="trl,alignkit", help="comma list of trl, alignkit (run in this order)")
    ap.add_argument("--out", help=f"default {DEFAULT_OUT.relative_to(REPO)} (with --dtype fp32: ..._fp32.json)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(MARK + json.dumps(child(json.loads(Path(args.spec).read_text()))), flush=True)
        return

    import torch

    from alignkit.models.embedded import embedded_model_dir

    cases = [c for c in args.cases.split(",") if c]
    if not cases or set(cases) - {"trl", "alignkit"}:
        raise SystemExit(f"--cases: use trl and/or alignkit, got {args.cases!r}")
    if args.group < 2:
        raise SystemExit("--group must be >= 2 (TRL's GRPO needs two samples per prompt for a baseline)")
    completions = args.prompts * args.group
    batch = args.batch_size or math.gcd(8, completions)  # 8: TRL's default per_device_train_batch_size
    if completions % batch:
        raise SystemExit(f"--batch-size {batch} must divide P x G = {completions} (TRL's accumulation is whole)")
    native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    precision = args.dtype if args.dtype != "auto" else ("bf16" if native_bf16 else "fp32")
    if args.steps < 2:
        print("note: with --steps 1 only the warm-up step is timed", file=sys.stderr)
    records, source = load_prompts()
    needed = args.prompts * args.steps
    if len(records) < needed:  # cycle: more steps than prompts (both read the file in order, one epoch after another)
        records = (records * math.ceil(needed / len(records)))[:needed]
    records = records[:needed]
    model_dir = str(embedded_model_dir())
    prompts = check_prompts(records, model_dir, args.max_prompt_length)
    print(
        f"prompts: {needed} from {source}, {prompts['min']}..{prompts['max']} tokens with the chat template, "
        f"tokenized {'identically' if prompts['identical'] else 'DIFFERENTLY (' + str(prompts['different']) + ')'}"
        " by alignkit and TRL"
    )
    print(f"first prompt as rendered: {prompts['first_rendered']!r}")
    print(
        f"batch: {args.prompts} prompts x {args.group} samples = {completions} completions/step, one optimizer "
        f"step per generation in {completions // batch} micro-batch(es) of {batch}; {args.max_new_tokens} new "
        f"tokens; {args.steps} steps; precision {precision} (native bf16: {native_bf16})"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpo-vs-trl-"))
    try:
        data = tmp / "prompts.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        settings = {
            "model_dir": model_dir,
            "data": str(data),
            "prompt_source": source,
            "steps": args.steps,
            "prompts": args.prompts,
            "group": args.group,
            "batch_size": batch,
            "max_new_tokens": args.max_new_tokens,
            "max_prompt_length": args.max_prompt_length,
            "temperature": args.temperature,
            "lr": args.lr,
            "seed": args.seed,
            "precision": precision,
            "dtype_arg": args.dtype,
            "reward": REWARD,
            "reward_workers": args.reward_workers,
            "alignkit_set": args.alignkit_set,
            "trl_set": args.trl_set,
        }
        results = {}
        for name in cases:
            print(f"running {name} ...", flush=True)
            raw = run_case(name, settings, args.timeout)
            if "failed" in raw:
                print(f"case {name} FAILED ({raw['failed']}); stderr tail:\n{raw['stderr_tail']}", file=sys.stderr)
                results[name] = {"raw": raw}
                continue
            raw["max_new_tokens"] = args.max_new_tokens
            d = derive(raw)
            results[name] = {"raw": raw, "derived": d}
            print(
                f"  {name:8s} {d['seconds_per_step']:7.2f} s/step (generate {d['generate_s_per_step']:.2f}, reward "
                f"{d['reward_s_per_step']:.3f}, train {d['train_s_per_step']:.2f})  "
                f"{d['generation_tokens_per_second']:6.1f} generated tokens/s  "
                f"{d['train_tokens_per_second']:6.0f} train tokens/s  peak RSS {d['peak_rss_mb']:.0f} MB  "
                f"setup {d['setup_s']:.1f} s  reward@1 {d['reward_step1']:.3f}",
                flush=True,
            )
        report = print_report(results, settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out or (DEFAULT_OUT.with_stem(DEFAULT_OUT.stem + "_fp32") if precision == "fp32" else DEFAULT_OUT))
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": {k: v for k, v in settings.items() if k != "data"},
        "prompts": prompts,
        "machine": machine_info(),
        "cases": results,
        **report,
    }
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    if any("failed" in c["raw"] for c in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
