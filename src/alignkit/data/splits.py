"""Reading, validating and tokenizing a method's data from the config, with one summary line per split."""

from __future__ import annotations

import random
from typing import Callable

from alignkit.config import DataConfig
from alignkit.data import Tokenizer, read_records, validate_records
from alignkit.errors import DataError


def load_split(
    spec: str,
    data: DataConfig,
    convert: Callable,
    tokenize: Callable,
    tok: Tokenizer,
    log: Callable,
    name: str,
    limit: int | None = None,
) -> list:
    """Records of ``spec`` -> validated examples -> tokenized items, reporting skips and truncations."""
    records = read_records(spec, data.split)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"{spec}: no records. Fix: point data.{name} at a file with data")
    examples, problems = validate_records(records, convert, data.on_invalid)
    if problems:
        log(f"{name}: skipped {len(problems)} invalid record(s) (data.on_invalid=skip); first: {problems[0]}")
    items, stats = tokenize(
        examples, tok, data.max_length, data.max_prompt_length, data.prompt_truncation, data.overlong
    )
    if not items:
        raise DataError(
            f"{spec}: no usable records left after validation and length limits. Fix: check the "
            "data format, or raise data.max_length"
        )
    log(f"{name}: {len(items)} examples from {spec}; {stats.summary()}")
    return items


def load_train_eval(
    data: DataConfig, convert: Callable, tokenize: Callable, tok: Tokenizer, seed: int, log: Callable
) -> tuple[list, list]:
    train = load_split(data.train, data, convert, tokenize, tok, log, "train", data.max_examples)
    if data.eval:
        return train, load_split(data.eval, data, convert, tokenize, tok, log, "eval")
    if data.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(len(train) * data.eval_fraction))
        held = set(order[:n_eval])
        log(f"eval: {n_eval} examples held out of train (data.eval_fraction={data.eval_fraction})")
        return [x for i, x in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
    return train, []
