"""Side-by-side DPO benchmark: TRL 1.16 ``DPOTrainer`` vs alignkit, same model, data, batch and settings.

    .venv/bin/python -m pip install -q -c constraints.txt -e ".[bench]"   # TRL (bench only; alignkit never imports it)
    .venv/bin/python bench/dpo_vs_trl.py [--steps 6] [--rounds 1] [--modes full,lora] [--out results.json]
    .venv/bin/python bench/dpo_vs_trl.py --precision bf16   # TRL bf16 vs alignkit bf16 (each its default reference)
    .venv/bin/python bench/dpo_vs_trl.py --steps 2 --modes lora --trl best --alignkit default   # a quick look

Cases (each in its own subprocess, so peak RSS is its own), alternating per mode, ``--rounds`` times:
  trl-default    DPOConfig defaults except the shared settings below: fp32 (bf16=False), live reference model.
  trl-best       bf16 autocast + precompute_ref_log_probs=True (padding_free is disabled in TRL 1.16 and
                 use_logits_to_keep no longer exists: 1.16 always scores through its fused LM head).
  alignkit-default   model.dtype=auto (bf16 autocast on a CPU with native bf16), reference precomputed, and
                     alignkit's default batch layout (train.prefix_sharing + train.packing: prompt+chosen+rejected
                     per pair, all pairs of a batch in one unpadded row, attention per pair).
  alignkit-fp32      model.dtype=fp32, otherwise the same.
Other variants: ``--trl fp32,bf16,fp32-precompute,bf16-precompute``; ``--alignkit bf16,fp32-live,bf16-plain,...``
(``plain`` = train.prefix_sharing=false: two rows per pair like TRL; ``shared`` = prefix sharing in one padded row
per pair, train.packing=false; ``packed`` = all pairs in one unpadded row, alignkit's default on SDPA models).
On CPU, TRL's ``bf16=True`` needs ``use_cpu=True`` (set for every TRL case); accelerate then runs the forward under
``torch.autocast("cpu", bfloat16)``, the same autocast alignkit uses (both report accelerate's mixed_precision).
TRL's literal out-of-the-box config differs from "trl-default": on a machine without a GPU, ``DPOConfig()`` raises
(its bf16 default needs ``use_cpu=True``); with ``use_cpu=True`` it trains in bf16 autocast with gradient
checkpointing and a live reference: ``--trl bf16 --trl-gradient-checkpointing`` runs that.

Shared settings: the embedded SmolLM2-135M-Instruct (the converted safetensors dir, loaded in fp32 by both); the
same hh-rlhf pairs in file order (alignkit ``train.shuffle=false``; TRL ``train_sampling_strategy="sequential"``,
the transformers 5.23 TrainingArguments option that makes Trainer use a SequentialSampler); batch 4 pairs, max length
256, AdamW betas 0.9/0.999, weight decay 0, constant lr (1e-6) with no warmup, max_grad_norm 1.0, beta 0.1 (sigmoid
loss), seed 42; LoRA r=16, alpha=32, dropout 0.05, target all-linear (peft LoraConfig via ``peft_config=``).
No gradient checkpointing for either (DPOConfig turns it on by default; it trades speed for memory, alignkit has it
off by default; ``--trl-gradient-checkpointing`` restores TRL's default). TRL keeps ``disable_dropout=False`` so
the LoRA dropout is 0.05 in both (TRL's default would zero it); the base model has no dropout. The optimizer is
each library's own: TRL's default ``adamw_torch_fused``, alignkit's ``torch.optim.AdamW`` (same update rule).

Data: the first ``steps x batch`` hh-rlhf records (``--data``, read in place) that alignkit accepts (invalid
records skipped, as ``data.on_invalid=skip``) and that fit in ``--max-length`` under BOTH tokenizations, so neither
library truncates anything. alignkit reads those raw records from a temporary JSONL (it parses the transcripts
itself); TRL gets the same conversations, converted with alignkit's own parser (``to_pairwise``), as
conversational records ``{"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}``.

Deliberate, documented tokenization difference (printed for the first pair): both render the SmolLM2 chat template
and agree on every prompt token; TRL's chat-template path keeps the newline the template writes after
``<|im_end|>`` as the last completion token, alignkit ends each completion at EOS (``<|im_end|>``) and drops it.
So each TRL row has one more (scored) token, its ``logps/*`` include log p("\\n" | ... <|im_end|>), and its
tokens/s counts those extra tokens (in TRL's favor); pairs/s is reported too and does not depend on tokenization.

Measured per case: wall seconds per optimizer step between consecutive step ends, steps 2..N (step 1 is warm-up);
tokens/s = tokens of the chosen + rejected sequences of the pairs each step consumed, 2 x prompt + chosen + rejected
per pair (= the attention-mask sum of TRL's two rows per pair; alignkit's own ``tokens`` count, checked, whatever
its layout), counted from the pairs each trainer actually fed / those seconds; pairs/s; MFU (bench/mfu.py: model
FLOPs of the layout each trainer runs, from the fed prompt / chosen / rejected lengths, over this machine's matmul
peak, measured before and after the cases and the better kept; the bf16 peak for bf16 autocast); peak RSS of the
case's process; setup (model load, data preparation, reference precompute: until step 1 begins) with the reference
precompute on its own; end-to-end = setup + all N steps (final save excluded: TRL saves nothing with
save_strategy="no", alignkit writes its model after the last step). alignkit's on-disk reference cache
(method.reference_cache) is turned off so every case computes its reference log-probs like TRL does
(``--alignkit-reference-cache`` keeps it on: reruns then skip the precompute).

Correctness: step-1 mean summed completion log-probs (``logps/chosen``, ``logps/rejected``, logged by both at
logging_steps=1), loss at step 1 and step N, grad norm at step 1, and tokens fed per step. At step 1 the policy is
the reference, so the loss is ln 2 up to rounding; under bf16 autocast a reference precomputed in differently padded
batches can round differently from the policy forward, moving the step-1 loss by up to ~0.01 (seen with TRL best).
With LoRA and dropout > 0 the dropout masks differ, so later losses and grad norms agree only roughly
(``--lora-dropout 0`` for a tighter check). In fp32 (``--precision fp32``) the two agree to about 1e-3 in logps (the
extra newline token), 1e-5 in loss and 1e-4 relative in grad norm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"
DEFAULT_OUT = REPO / "bench" / "results" / "dpo_vs_trl.json"
MARK = "@@bench-result "
GOALS = (("default", "default", 3.0), ("default", "best", 1.5))  # (alignkit variant, TRL variant, min tokens/s ratio)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/mfu.py


# ------------------------------------------------------------------------------------------------- cases


def parse_variant(framework: str, name: str) -> tuple[str, str, str | None]:
    """(precision, reference, layout) of a variant name: ``default``, ``best`` (TRL), or dash-joined words:
    a precision (fp32, bf16; alignkit also auto), optionally live / precompute, and for alignkit plain / shared
    (train.prefix_sharing off / on; unset = alignkit's default)."""
    aliases = {
        ("trl", "default"): ("fp32", "live", None),
        ("trl", "best"): ("bf16", "precompute", None),
        ("alignkit", "default"): ("auto", "precompute", None),
    }
    if (framework, name) in aliases:
        return aliases[framework, name]
    words = name.split("-")
    precision = words[0]
    reference = next((w for w in words[1:] if w in ("live", "precompute")), None)
    reference = reference or ("live" if framework == "trl" else "precompute")
    layout = next((w for w in words[1:] if w in ("plain", "shared", "packed")), None)
    allowed = ("fp32", "bf16") if framework == "trl" else ("fp32", "bf16", "auto")
    known = {"live", "precompute"} | ({"plain", "shared", "packed"} if framework == "alignkit" else set())
    if precision not in allowed or not set(words[1:]) <= known:
        raise SystemExit(f"unknown {framework} variant {name!r}: use default, best (TRL), or e.g. bf16-precompute")
    return precision, reference, layout


def build_cases(args) -> list[dict]:
    cases = []
    for mode in args.modes:
        for i in range(max(len(args.trl), len(args.alignkit))):  # alternate: trl, alignkit, trl, alignkit, ...
            for framework, variants in (("trl", args.trl), ("alignkit", args.alignkit)):
                if i < len(variants):
                    precision, reference, layout = parse_variant(framework, variants[i])
                    cases.append(
                        {
                            "name": f"{framework}-{variants[i]}-{mode}",
                            "framework": framework,
                            "variant": variants[i],
                            "mode": mode,
                            "precision": precision,
                            "reference": reference,
                            "layout": layout,
                        }
                    )
    return cases


# -------------------------------------------------------------------------------------------------- data


def trl_tokenize(hf_tok, prompt: list, completion: list) -> tuple[list[int], list[int]]:
    """TRL 1.16 ``DPOTrainer._prepare_dataset``'s conversational tokenization of one side of a pair."""
    from trl.data_utils import _tokenize, common_prefix_length

    prompt_ids = _tokenize(hf_tok, prompt, add_generation_prompt=True)["input_ids"]
    full = _tokenize(hf_tok, prompt + completion)["input_ids"]
    n = common_prefix_length(prompt_ids, full)
    return prompt_ids[:n], full[n:]


def select_pairs(data: str, n: int, max_length: int, model_dir: str) -> dict:
    """The first ``n`` valid records that fit ``max_length`` under both tokenizations, and how each tokenizes."""
    from transformers import AutoTokenizer

    from alignkit.data import Tokenizer, read_records, to_pairwise
    from alignkit.data.formats import InvalidRecord

    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    tok = Tokenizer(hf_tok)
    raw, trl_records, lengths, first = [], [], [], None
    invalid = overlong = 0
    for source, record in read_records(data):
        try:
            ex = to_pairwise(record, source)
        except InvalidRecord:
            invalid += 1
            continue
        if not isinstance(ex.prompt, tuple):
            raise SystemExit(f"{source}: not a conversation; this benchmark expects hh-rlhf transcripts")
        prompt, chosen, rejected = (list(map(dict, x)) for x in (ex.prompt, ex.chosen, ex.rejected))
        a_prompt, a_chosen = tok.split(ex.prompt, ex.chosen)
        _, a_rejected = tok.split(ex.prompt, ex.rejected)
        t_prompt, t_chosen = trl_tokenize(hf_tok, prompt, chosen)
        t_prompt_r, t_rejected = trl_tokenize(hf_tok, prompt, rejected)
        a_rows = [len(a_prompt) + len(a_chosen), len(a_prompt) + len(a_rejected)]
        t_rows = [len(t_prompt) + len(t_chosen), len(t_prompt_r) + len(t_rejected)]
        if max(a_rows + t_rows) > max_length:
            overlong += 1
            continue
        if first is None:
            first = {
                "source": source,
                "prompt_identical": a_prompt == t_prompt == t_prompt_r,
                "prompt_tokens": len(a_prompt),
                "alignkit": {"chosen": a_chosen, "rejected": a_rejected},
                "trl": {"chosen": t_chosen, "rejected": t_rejected},
                "decode_tail": {
                    "alignkit": hf_tok.convert_ids_to_tokens(a_chosen[-3:]),
                    "trl": hf_tok.convert_ids_to_tokens(t_chosen[-3:]),
                },
            }
        raw.append(record)
        trl_records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        lengths.append({"alignkit": a_rows, "trl": t_rows})
        if len(raw) == n:
            break
    if len(raw) < n:
        raise SystemExit(f"{data}: only {len(raw)} usable pairs fit in {max_length} tokens, {n} needed")
    return {
        "raw": raw,
        "trl": trl_records,
        "lengths": lengths,
        "first_pair": first,
        "skipped_invalid": invalid,
        "skipped_overlong": overlong,
    }


# ------------------------------------------------------------------------------------------------ children


def child(spec: dict) -> dict:
    """Runs one case in this process and returns its raw measurements."""
    import resource

    import torch

    out = run_trl(spec) if spec["case"]["framework"] == "trl" else run_alignkit(spec)
    out.update(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, threads=torch.get_num_threads())
    return out


def _metrics_row(row: dict) -> dict:
    keys = ("loss", "logps/chosen", "logps/rejected", "grad_norm", "rewards/margins", "learning_rate")
    return {k: float(row[k]) for k in keys if k in row}


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from mfu import model_shape
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    case, s = spec["case"], spec["settings"]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.begin, self.end = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

    class BenchDPOTrainer(DPOTrainer):
        """Records [P, C, R] token counts of the pairs each optimizer step is fed, from the batch's masks, and the
        reference precompute time; nothing else changes."""

        def __init__(self, *a, **k):
            self.bench_pairs, self.bench_precompute_s = [], 0.0
            super().__init__(*a, **k)

        def training_step(self, model, inputs, *a, **k):
            rows, completions = inputs["attention_mask"].sum(-1).tolist(), inputs["completion_mask"].sum(-1).tolist()
            b = len(rows) // 2  # rows 0..b-1 chosen, b..2b-1 rejected
            self.bench_pairs.append([[rows[i] - completions[i], completions[i], completions[b + i]] for i in range(b)])
            return super().training_step(model, inputs, *a, **k)

        def _precompute_ref_logps(self, *a, **k):
            t = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **k)
            self.bench_precompute_s += time.perf_counter() - t
            return out

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(s["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(s["model_dir"])
    dataset = Dataset.from_list([json.loads(line) for line in Path(s["trl_data"]).read_text().splitlines()])
    precompute = case["reference"] == "precompute"
    config = DPOConfig(
        output_dir=spec["workdir"],
        use_cpu=True,
        bf16=case["precision"] == "bf16",
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=s["steps"],
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        beta=s["beta"],
        loss_type=["sigmoid"],
        max_length=s["max_length"],
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=s["ref_batch_size"] if precompute else None,
        gradient_checkpointing=s["trl_gradient_checkpointing"],
        disable_dropout=False,
        train_sampling_strategy="sequential",
        seed=s["seed"],
        data_seed=s["seed"],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = None
    if case["mode"] == "lora":
        peft_config = LoraConfig(
            r=s["lora_r"],
            lora_alpha=s["lora_alpha"],
            lora_dropout=s["lora_dropout"],
            target_modules=s["lora_targets"],
            bias="none",
            task_type="CAUSAL_LM",
        )
    timer = StepTimes()
    trainer = BenchDPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    shape = model_shape(trainer.model)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        "mixed_precision": trainer.accelerator.mixed_precision,
        "optimizer": f"{type(optimizer).__name__}(fused={optimizer.defaults.get('fused')})",
        "live_reference": not precompute,
        "train_examples": len(trainer.train_dataset),
        "precompute_s": trainer.bench_precompute_s,
        "first_step_begin_s": timer.begin[0] - t0,
        "step_ends_s": [t - t0 for t in timer.end],
        "layout": "plain",
        "pairs": trainer.bench_pairs,
        "metrics": [_metrics_row(r) for r in trainer.state.log_history if "loss" in r],
        "shape": shape,
    }


def run_alignkit(spec: dict) -> dict:
    import dataclasses

    from mfu import model_shape

    import alignkit.train.methods.preference as preference
    from alignkit.config import PreferenceMethodConfig, TrainConfig
    from alignkit.data.jsonl import read_jsonl
    from alignkit.train import fit, make_config, prepare

    case, s = spec["case"], spec["settings"]
    out = spec["workdir"]
    overrides = [
        f"model.name={s['model_dir']}",
        f"model.dtype={case['precision']}",
        "model.device=cpu",
        f"data.train={s['alignkit_data']}",
        f"data.max_length={s['max_length']}",
        "data.on_invalid=skip",
        "data.overlong=skip",
        f"train.output_dir={out}",
        f"train.batch_size={s['batch_size']}",
        "train.grad_accum=1",
        f"train.max_steps={s['steps']}",
        f"train.learning_rate={s['lr']}",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0",
        "train.warmup_steps=0",
        "train.weight_decay=0",
        "train.adam_betas=[0.9, 0.999]",
        "train.max_grad_norm=1.0",
        f"train.seed={s['seed']}",
        "train.shuffle=false",
        "train.logging_steps=1",
        f"train.eval_batch_size={s['ref_batch_size']}",
        "train.gradient_checkpointing=false",
        f"method.beta={s['beta']}",
        f"method.reference={case['reference']}",
    ]
    if any(f.name == "reference_cache" for f in dataclasses.fields(PreferenceMethodConfig)):
        overrides.append(f"method.reference_cache={str(s.get('alignkit_reference_cache', False)).lower()}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if case.get("layout") and "prefix_sharing" in fields:
        overrides.append(f"train.prefix_sharing={str(case['layout'] != 'plain').lower()}")
    if case.get("layout") and "packing" in fields:
        overrides.append(f"train.packing={str(case['layout'] == 'packed').lower()}")
    if case["mode"] == "lora":
        targets = s["lora_targets"] if isinstance(s["lora_targets"], str) else json.dumps(s["lora_targets"])
        overrides += [
            f"lora.r={s['lora_r']}",
            f"lora.alpha={s['lora_alpha']}",
            f"lora.dropout={s['lora_dropout']}",
            f"lora.target_modules={targets}",
        ]
    log = lambda *a, **k: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    p = prepare("dpo", make_config("dpo", overrides=overrides), log=log)
    shape = model_shape(p.model)
    rec = {"precompute_s": 0.0, "training": False, "pairs": [], "logical": [], "layout": set()}
    ends, own = [], []
    setup, collate, prepare_reference = p.method.setup, p.method.collate, preference.prepare_reference

    def timed_prepare_reference(*a, **k):  # the reference precompute alone (setup also checks prefix sharing)
        t = time.perf_counter()
        result = prepare_reference(*a, **k)
        rec["precompute_s"] += time.perf_counter() - t
        return result

    def timed_setup(*a, **k):
        result = setup(*a, **k)
        rec["training"] = True
        return result

    def recording_collate(items):
        batch = collate(items)
        if rec["training"]:
            rec["pairs"].append([[len(x.prompt_ids), len(x.chosen_ids), len(x.rejected_ids)] for x in items])
            rec["logical"].append(p.method.tokens(batch))
            shared = "shared" if "logp_index" in batch else "plain"
            rec["layout"].add("packed" if "segment_lengths" in batch else shared)
        return batch

    def on_step(state, metrics):
        ends.append(time.perf_counter())
        own.append(metrics["seconds_per_step"])

    preference.prepare_reference = timed_prepare_reference
    p.method.setup, p.method.collate = timed_setup, recording_collate
    fit(p.method, p.cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, False, [on_step], p.log)
    (layout,) = rec["layout"]
    if rec["logical"] != [sum(2 * a + b + c for a, b, c in step) for step in rec["pairs"]]:
        raise RuntimeError(f"alignkit's token count {rec['logical']} differs from the pairs fed {rec['pairs']}")
    return {
        "mixed_precision": p.accelerator.mixed_precision,
        "optimizer": "AdamW(torch.optim, default implementation)",
        "live_reference": case["reference"] == "live",
        "train_examples": len(p.train_items),
        "precompute_s": rec["precompute_s"] if case["reference"] == "precompute" else 0.0,
        "first_step_begin_s": ends[0] - own[0] - t0,
        "step_ends_s": [t - t0 for t in ends],
        "layout": layout,
        "pairs": rec["pairs"],
        "metrics": [_metrics_row(r) for r in read_jsonl(Path(out) / "metrics.jsonl") if "loss" in r],
        "shape": shape,
    }


def run_case(case: dict, settings: dict, timeout: float) -> dict:
    """Runs ``case`` in a fresh process; its output dir (alignkit saves the model) is deleted afterwards."""
    workdir = tempfile.mkdtemp(prefix="bench-case-")
    try:
        return _run_case(case, settings, timeout, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_case(case: dict, settings: dict, timeout: float, workdir: str) -> dict:
    spec = json.dumps({"case": case, "settings": settings, "workdir": workdir})
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
        PYTHONWARNINGS="ignore",
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--child", spec], capture_output=True, text=True, env=env, timeout=timeout
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"case {case['name']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len(MARK) :])


# ------------------------------------------------------------------------------------------------ analysis


def derive(case: dict, raw: dict, peaks: dict) -> dict:
    """Per-case numbers from the raw measurements: steady-state rates over steps 2..N, setup, MFU."""
    from mfu import dpo_step_flops

    ends, pairs = raw["step_ends_s"], raw["pairs"]
    precision = "bf16" if raw["mixed_precision"] == "bf16" else "fp32"
    lora, live = case["mode"] == "lora", raw["live_reference"]
    flops = [dpo_step_flops(raw["shape"], step, raw["layout"], lora, live) for step in pairs]
    logical = [sum(2 * p + c + r for p, c, r in step) for step in pairs]  # chosen + rejected rows, prompt twice
    first_step = ends[0] - raw["first_step_begin_s"]
    if len(ends) > 1:
        span, steady = ends[-1] - ends[0], slice(1, None)
    else:  # one step: nothing but warm-up to time
        span, steady = first_step, slice(0, 1)
    n_steady = len(pairs[steady])
    achieved = sum(flops[steady]) / span
    return {
        "precision": precision,
        "seconds_per_step": span / n_steady,
        "tokens_per_second": sum(logical[steady]) / span,
        "pairs_per_second": sum(len(step) for step in pairs[steady]) / span,
        "mfu_percent": 100 * achieved / (peaks[precision] * 1e9),
        "model_tflops_per_step": statistics.mean(flops[steady]) / 1e12,
        "achieved_gflops": achieved / 1e9,
        "first_step_s": first_step,
        "setup_s": raw["first_step_begin_s"],
        "precompute_s": raw["precompute_s"],
        "e2e_s": ends[-1],
        "peak_rss_mb": raw["peak_rss_mb"],
        "tokens_per_step": logical,
        "layout": raw["layout"],
    }


def summarize(cases: list[dict], runs: list[dict]) -> list[dict]:
    """Median over rounds of each case's derived numbers."""
    keys = (
        "seconds_per_step",
        "tokens_per_second",
        "pairs_per_second",
        "mfu_percent",
        "setup_s",
        "precompute_s",
        "e2e_s",
        "peak_rss_mb",
        "first_step_s",
    )
    out = []
    for case in cases:
        mine = [r["derived"] for r in runs if r["case"]["name"] == case["name"]]
        out.append({**case, "precision": mine[0]["precision"], "layout": mine[0]["layout"], "rounds": len(mine)})
        out[-1].update({k: statistics.median(d[k] for d in mine) for k in keys})
    return out


def ratios(summary: list[dict]) -> list[dict]:
    goals = {(a, t): g for a, t, g in GOALS}
    out = []
    for a in (s for s in summary if s["framework"] == "alignkit"):
        for t in (s for s in summary if s["framework"] == "trl" and s["mode"] == a["mode"]):
            goal = goals.get((a["variant"], t["variant"]))
            tok = a["tokens_per_second"] / t["tokens_per_second"]
            out.append(
                {
                    "mode": a["mode"],
                    "alignkit": a["name"],
                    "trl": t["name"],
                    "tokens_per_second": tok,
                    "pairs_per_second": a["pairs_per_second"] / t["pairs_per_second"],
                    "e2e_speedup": t["e2e_s"] / a["e2e_s"],
                    "peak_rss": a["peak_rss_mb"] / t["peak_rss_mb"],
                    "goal": goal,
                    "meets_goal": None if goal is None else tok >= goal,
                }
            )
    return out


def print_tables(summary, ratio_rows, runs, first_pair, steps) -> None:
    print("\n### Throughput (median over rounds; steps 2..N timed, step 1 is warm-up)\n")
    print(
        "| case | precision | reference | layout | s/step | tokens/s | pairs/s | MFU % | peak RSS MB | setup s "
        "| ref precompute s | end-to-end s |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in summary:
        print(
            f"| {s['name']} | {s['precision']} | {s['reference']} | {s['layout']} | {s['seconds_per_step']:.2f} "
            f"| {s['tokens_per_second']:.0f} | {s['pairs_per_second']:.2f} | {s['mfu_percent']:.1f} "
            f"| {s['peak_rss_mb']:.0f} | {s['setup_s']:.1f} | {s['precompute_s']:.1f} | {s['e2e_s']:.1f} |"
        )
    print("\n### alignkit / TRL\n")
    print("| mode | alignkit | TRL | tokens/s ratio | pairs/s ratio | end-to-end speedup | RSS ratio | goal |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for r in ratio_rows:
        goal = "" if r["goal"] is None else f">= {r['goal']:g}x: {'met' if r['meets_goal'] else 'NOT met'}"
        print(
            f"| {r['mode']} | {r['alignkit']} | {r['trl']} | {r['tokens_per_second']:.2f}x "
            f"| {r['pairs_per_second']:.2f}x | {r['e2e_speedup']:.2f}x | {r['peak_rss']:.2f} | {goal} |"
        )
    print(f"\n### Correctness (round 1; step 1 = the first batch, before any update; step {steps} = last)\n")
    print(
        f"| case | tokens step 1 | logps/chosen step 1 | logps/rejected step 1 | loss step 1 | loss step {steps} "
        "| grad norm step 1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    seen = set()
    for r in runs:
        name = r["case"]["name"]
        if name in seen:
            continue
        seen.add(name)
        m = r["raw"]["metrics"]
        print(
            f"| {name} | {r['derived']['tokens_per_step'][0]} | {m[0]['logps/chosen']:.4f} "
            f"| {m[0]['logps/rejected']:.4f} | {m[0]['loss']:.6f} | {m[-1]['loss']:.6f} | {m[0]['grad_norm']:.4f} |"
        )
    tail = first_pair["decode_tail"]
    print(
        f"\nTokenization: TRL completions end with {tail['trl'][-2:]}, alignkit's with {tail['alignkit'][-1:]}, "
        "so TRL feeds and scores one token more per row (tokens step 1 differ by 2 x batch); prompts are "
        f"{'identical' if first_pair['prompt_identical'] else 'DIFFERENT'}."
    )


def print_first_pair(first: dict) -> None:
    print(
        f"first pair ({first['source']}): prompt {first['prompt_tokens']} tokens, identical in both: "
        f"{first['prompt_identical']}"
    )
    for side in ("chosen", "rejected"):
        a, t = first["alignkit"][side], first["trl"][side]
        same = "identical" if a == t else ("TRL = alignkit + " + str(t[len(a) :]) if t[: len(a)] == a else "DIFFERENT")
        print(f"  {side}: alignkit {len(a)} tokens, TRL {len(t)} tokens ({same})")
        print(f"    alignkit ids: {a}")
        print(f"    TRL ids:      {t}")
    print(f"  last tokens: alignkit {first['decode_tail']['alignkit']}, TRL {first['decode_tail']['trl']}")


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per case; step 1 is not timed")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the alternation; medians are reported")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--modes", default="full,lora", help="comma list of full, lora")
    ap.add_argument("--trl", default="default,best", help="TRL variants (comma list), see the module docstring")
    ap.add_argument("--alignkit", default="default,fp32", help="alignkit variants (comma list)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), help="matched precision only: overrides --trl/--alignkit")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--lora-targets", default="all-linear", help="all-linear or a comma list, e.g. q_proj,v_proj")
    ap.add_argument("--ref-batch-size", type=int, default=8, help="batch of the reference precompute (both)")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL's own default (on)")
    ap.add_argument("--alignkit-reference-cache", action="store_true", help="keep alignkit's on-disk reference cache")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(MARK + json.dumps(child(json.loads(args.child))), flush=True)
        return

    from mfu import measure_peaks

    from alignkit.models.embedded import embedded_model_dir

    args.modes = [m for m in args.modes.split(",") if m]
    args.trl = [args.precision] if args.precision else [v for v in args.trl.split(",") if v]
    args.alignkit = [args.precision] if args.precision else [v for v in args.alignkit.split(",") if v]
    if args.steps < 2:
        print("note: with --steps 1 only the warm-up step is timed", file=sys.stderr)
    cases = build_cases(args)
    peaks = measure_peaks()
    print(
        f"matmul peak ({peaks['threads']} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )

    model_dir = str(embedded_model_dir())
    n_pairs = args.steps * args.batch_size
    data = select_pairs(args.data, n_pairs, args.max_length, model_dir)
    print(
        f"data: first {n_pairs} usable pairs of {args.data} (skipped {data['skipped_invalid']} invalid, "
        f"{data['skipped_overlong']} over {args.max_length} tokens)"
    )
    print_first_pair(data["first_pair"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-dpo-vs-trl-"))
    try:
        _main(args, cases, peaks, model_dir, n_pairs, data, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(args, cases, peaks, model_dir, n_pairs, data, tmp: Path) -> None:
    from mfu import measure_peaks

    (tmp / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data["raw"]))
    (tmp / "trl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data["trl"]))
    targets = args.lora_targets if args.lora_targets == "all-linear" else args.lora_targets.split(",")
    settings = {
        "model_dir": model_dir,
        "alignkit_data": str(tmp / "pairs.jsonl"),
        "trl_data": str(tmp / "trl.jsonl"),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "lr": args.lr,
        "beta": args.beta,
        "seed": args.seed,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "lora_targets": targets,
        "ref_batch_size": args.ref_batch_size,
        "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
        "alignkit_reference_cache": args.alignkit_reference_cache,
    }

    runs = []
    for rnd in range(args.rounds):
        for case in cases:
            raw = run_case(case, settings, args.timeout)
            expected = [
                sum(sum(x[case["framework"]]) for x in data["lengths"][i : i + args.batch_size])
                for i in range(0, n_pairs, args.batch_size)
            ]
            d = derive(case, raw, peaks)
            if d["tokens_per_step"] != expected or raw["train_examples"] != n_pairs:
                print(
                    f"WARNING: {case['name']} was fed {d['tokens_per_step']} tokens per step "
                    f"({raw['train_examples']} examples), expected {expected} ({n_pairs})",
                    file=sys.stderr,
                )
            runs.append({"round": rnd + 1, "case": case, "raw": raw, "derived": d})
            print(
                f"[round {rnd + 1}] {case['name']:24s} {d['precision']} {case['reference']:10s} {d['layout']:6s} "
                f"{d['seconds_per_step']:7.2f} s/step {d['tokens_per_second']:7.0f} tokens/s "
                f"MFU {d['mfu_percent']:5.1f}%  peak RSS {d['peak_rss_mb']:6.0f} MB  setup {d['setup_s']:5.1f} s "
                f"(ref precompute {d['precompute_s']:.1f} s)  e2e {d['e2e_s']:.1f} s",
                flush=True,
            )

    end = measure_peaks()  # again after the runs: the MFU denominator is the better of the two measurements
    peaks = {**peaks, "fp32": max(peaks["fp32"], end["fp32"]), "bf16": max(peaks["bf16"], end["bf16"])}
    print(f"matmul peak after the runs: fp32 {end['fp32']:.0f}, bf16 {end['bf16']:.0f} GFLOP/s; tables use the max")
    for r in runs:
        r["derived"] = derive(r["case"], r["raw"], peaks)
    summary = summarize(cases, runs)
    ratio_rows = ratios(summary)
    print_tables(summary, ratio_rows, runs, data["first_pair"], args.steps)
    import torch
    import transformers
    import trl

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": {k: v for k, v in settings.items() if not k.endswith("_data")}
        | {
            "data": args.data,
            "pairs": n_pairs,
            "rounds": args.rounds,
            "trl_variants": args.trl,
            "alignkit_variants": args.alignkit,
            "modes": args.modes,
        },
        "machine": {
            "cpu": _cpu_name(),
            "threads": peaks["threads"],
            "matmul_peak_gflops": {"fp32": peaks["fp32"], "bf16": peaks["bf16"]},
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "data": {k: data[k] for k in ("first_pair", "skipped_invalid", "skipped_overlong", "lengths")},
        "summary": summary,
        "ratios": ratio_rows,
        "runs": runs,
    }
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
