"""Run under `accelerate launch`: train METHOD (dpo, kto, rm) on the tiny model; every rank saves its weights."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from alignkit.train import fit, make_config, prepare
from alignkit.train.checkpoint import trainable_state

model_dir, data, out, batch_size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
method = sys.argv[5] if len(sys.argv) > 5 else "dpo"
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
    ],
)
p = prepare(method, cfg, log=lambda *a: None)
fit(p.method, cfg, p.model, p.tokenizer, p.train_items, p.eval_items, p.accelerator, log=lambda *a: None)
save_file(trainable_state(p.model), str(out / f"rank{p.accelerator.process_index}.safetensors"))
