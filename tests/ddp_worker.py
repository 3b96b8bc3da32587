"""Run under `accelerate launch`: train METHOD (dpo, kto, rm, grpo) on the tiny model; every rank saves its weights."""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from alignkit.train import fit, make_config, prepare
from alignkit.train.checkpoint import trainable_state

model_dir, data, out, batch_size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
method = sys.argv[5] if len(sys.argv) > 5 else "dpo"
online = (
    [
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=10",
        "method.rewards=[reward_fns:yes_share]",
        "method.reward_workers=0",
        "method.beta=0.05",
        "method.iterations=2",
        "method.minibatches=2",
        "data.max_length=48",
    ]
    if method in ("grpo", "ppo")
    else []
)
if method == "ppo":
    online += ["rollout.samples_per_prompt=2", "method.kl_target=1.0", "method.kl_horizon=8"]
cfg = make_config(
    method,
    overrides=[
        f"model.name={model_dir}",
        "model.device=cpu",
        "model.dtype=fp32",
        f"data.train={data}",
        "data.max_length=64",
        f"train.output_dir={out}",
        f"train.batch_size={batch_size}",
        "train.max_steps=3",
        "train.learning_rate=1e-3",
        "train.logging_steps=1",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0",
        *online,
        *os.environ.get("ALIGNKIT_EXTRA", "").split(),
    ],
)
p = prepare(method, cfg, log=lambda *a: None)
fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, log=lambda *a: None)
save_file(trainable_state(p.model), str(out / f"rank{p.accelerator.process_index}.safetensors"))
