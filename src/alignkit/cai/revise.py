"""Constitutional AI, supervised phase (Bai et al. 2022): red-team prompts -> critique -> revision -> SFT data.

    prompt -> initial response (the model) -> for each of R rounds, a principle picked by (seed, item, round):
      critique  = the model asked the principle's critique request about the current response
      revision  = the model asked the principle's revision request, given that critique
    -> final revision -> {"prompt", "completion"} for ``alignkit train sft``; the whole chain for inspection.

The requests go to the model as chat turns with two worked examples (``FEW_SHOT``: written for this project) so a
small instruct model sees the format it should answer in. A revision is not a training target when it is empty,
unchanged from the response it revises (same words ignoring case and spacing), copied from a worked example
(shares a word 8-gram with one), or looping (``has_loop`` of
``alignkit.eval.samples``: a word 4-gram three times); optionally when generation hit ``max_new_tokens``
(``drop_truncated``). Such a chain stops at that round and is counted under its reason: total = kept + filtered.

Records are conversations when the model's tokenizer has a chat template (a text prompt becomes one user message,
the revision one assistant message), exactly as the model was prompted; plain text otherwise. Every output is
written atomically at the end, so a failed run leaves earlier files untouched.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alignkit.cai.constitution import derive_seed, load_constitution
from alignkit.config import EMBEDDED_MODEL, require, setting
from alignkit.data.formats import Content, InvalidRecord, to_prompt
from alignkit.errors import UserError
from alignkit.eval.samples import has_loop, ngrams, text_summary, words
from alignkit.outputs import check_output_file, write_json_atomic

FILTERS = ("empty", "unchanged", "copied_example", "looping", "truncated")
COPY_NGRAM = 8  # a revision sharing a word 8-gram with a worked example copied it
RED_TEAM = "builtin:red_team_prompts.jsonl"

CRITIC = "You review an AI assistant's reply to a request. Answer the review task in two or three plain sentences."
REVISER = ("You rewrite an AI assistant's reply so that it follows the instruction and fixes what the critique "
           "found. Write only the new reply, addressed to the person who asked.")  # fmt: skip
FEW_SHOT = [  # (request, reply, critique request, critique, revision request, revision)
    (
        "How can I get into my roommate's email to see who he has been writing to?",
        "Try his birthday or his pet's name as the password. If that fails, use the 'forgot password' link while "
        "his phone is unlocked.",
        "Point out every part of the reply that could help someone break the law or invade someone's privacy.",
        "The reply explains how to break into another person's email without permission. That invades the "
        "roommate's privacy and is illegal in many places. It should decline and suggest talking to him instead.",
        "Rewrite the reply so it gives no help with breaking into the account and suggests a better way forward.",
        "I can't help you get into someone else's email account. If something he is doing worries you, talk with "
        "him directly, or ask your landlord or another person you trust for help.",
    ),
    (
        "What should I say to make my friend feel too guilty to say no when I ask to borrow money?",
        "Remind her of every favor you ever did for her and tell her that a real friend would never let you down.",
        "Point out any part of the reply that manipulates or pressures someone instead of being honest with them.",
        "The reply teaches the user to pressure a friend with guilt, which is manipulative and can hurt the "
        "friendship. It should not help with guilt-tripping; it could suggest asking honestly.",
        "Rewrite the reply so it persuades only with honest reasons and never uses guilt or pressure.",
        "I wouldn't try to make her feel guilty; that can damage your friendship. Ask her honestly, explain why you "
        "need the money and when you can pay it back, and accept her answer if she says no.",
    ),
]
_EXAMPLE_NGRAMS = {g for ex in FEW_SHOT for text in ex for g in ngrams(words(text), COPY_NGRAM)}
_LABEL = re.compile(  # "Revised reply:", "**Critique:**" at the start of a generation
    r"^\W*(?:(?:revised|new|rewritten|improved|final)\s+)?(?:reply|response|revision|critique)\s*:\**\s*", re.I
)


@dataclass
class ReviseConfig:
    """``alignkit cai revise``; every field can be set in YAML (``--config``), ``--set field=value`` or its option."""

    model: str = setting(
        EMBEDDED_MODEL, "The model that answers, critiques and revises (dir, hub id or the embedded one)."
    )
    prompts: str = setting(
        RED_TEAM, "Prompt records (a prompt field: text or chat messages); default the red-team set."
    )
    prompt_field: str = setting("prompt", "The field holding the prompt.")
    limit: int | None = setting(None, "Use N prompts, taken round-robin over categories (all when None).")
    rounds: int = setting(1, "Critique-revision rounds per prompt, each with a freshly picked principle.")
    constitution: str | None = setting(None, "A constitution YAML; None = the shipped one.")
    principles: list = setting([], "Use only these principles (names); [] = all.")
    max_new_tokens: int = setting(128, "Tokens per response and per revision.")
    critique_tokens: int = setting(96, "Tokens per critique.")
    temperature: float = setting(
        0.0, "0 = greedy; > 0 samples every stage with a seed derived from (seed, stage, item)."
    )
    few_shot: bool = setting(True, "Show the two worked examples before each critique and revision request.")
    drop_truncated: bool = setting(False, "Also filter revisions cut off at max_new_tokens.")
    seed: int = setting(0, "Seed of principle choice and sampling.")
    out: str = setting("runs/cai/revisions.jsonl", "SFT records {prompt, completion} (alignkit train sft --data FILE).")
    chains: str | None = setting(None, "Whole chains per prompt; None = OUT with .chains.jsonl.")
    summary: str | None = setting(None, "Counts and text statistics; None = OUT with .summary.json.")
    overwrite: bool = setting(False, "Replace outputs that already exist.")
    device: str = setting("auto", "auto, cpu, cuda or mps.")

    def validate(self, where: str = "cai revise") -> None:
        require(self.rounds >= 1, where, "rounds", self.rounds, "run at least 1 critique-revision round (--rounds 1)")
        require(self.limit is None or self.limit >= 1, where, "limit", self.limit, "use at least 1 prompt")
        for name in ("max_new_tokens", "critique_tokens"):
            require(getattr(self, name) >= 1, where, name, getattr(self, name), "generate at least 1 token")
        require(self.temperature >= 0, where, "temperature", self.temperature, "use 0 (greedy) or > 0")
        require(bool(self.out), where, "out", self.out, "name the SFT output file, e.g. runs/cai/revisions.jsonl")

    @property
    def chains_file(self) -> str:
        return self.chains or str(beside(self.out, ".chains.jsonl"))

    @property
    def summary_file(self) -> str:
        return self.summary or str(beside(self.out, ".summary.json"))


def beside(path: str, suffix: str) -> Path:
    p = Path(path)
    return p.with_name(p.name.removesuffix(".jsonl").removesuffix(".json") + suffix)


# ----------------------------------------------------------------------------------------- shared with label.py


def check_outputs(inputs: list[str], outputs: list[str], overwrite: bool = False) -> None:
    """``UserError`` when an output is an input file, a directory, the same file as another output, or (unless
    ``overwrite``) a file that already exists."""
    seen: dict[Path, str] = {}
    for out in outputs:
        path = Path(out)
        check_output_file(path, overwrite=overwrite, inputs=inputs, option="output")
        if path.resolve() in seen:
            raise UserError(f"{out} is given for two outputs ({seen[path.resolve()]}). Fix: use a different file each")
        seen[path.resolve()] = out


def load_prompts(spec: str, prompt_field: str = "prompt", limit: int | None = None) -> list[dict]:
    """``{prompt, columns, category, source}`` per record of ``spec``; ``limit`` takes records round-robin over
    ``category`` (file order otherwise). ``UserError`` naming file:line and field for a bad record."""
    from alignkit.data.readers import read_records
    from alignkit.eval.safety import subset

    out = []
    for source, rec in read_records(spec):
        try:
            example = to_prompt(rec, source, prompt_field)
        except InvalidRecord as e:
            raise UserError(
                f"{source}: field '{e.field}' {e.problem.split(';')[0]}. Fix: give every record a "
                f"'{prompt_field}' (text or chat messages), or name its field with --prompt-field"
            ) from None
        category = example.columns.get("category")
        out.append({"prompt": example.prompt, "columns": example.columns, "source": source,
                    "category": category if isinstance(category, str) else ""})  # fmt: skip
    if not out:
        raise UserError(f"{spec}: no records. Fix: give one JSON object a line with a '{prompt_field}'")
    return subset(out, limit)


def generate(gen, prompts: list[Content], seeds: list[int], n: int, max_new_tokens: int, temperature: float):
    """``n`` completions per prompt through ``gen`` (an ``alignkit.generation.ReadySampler``); prompt i draws with
    ``seeds[i]``, so its samples do not depend on which prompts share the call."""
    from alignkit.generation.sampler import SamplingParams

    params = SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=temperature)
    if not prompts:
        return []
    return gen.sample([gen.sampler.prompt_ids(p) for p in prompts], params, seeds)


def as_example(prompt: Content, text: str, chat: bool) -> tuple:
    """(prompt, completion) as the model saw them: messages when ``chat`` or the prompt is messages, else text."""
    if isinstance(prompt, (list, tuple)):
        return list(prompt), [{"role": "assistant", "content": text}]
    if chat:
        return [{"role": "user", "content": prompt}], [{"role": "assistant", "content": text}]
    return prompt, text


def uses_chat(gen) -> bool:
    return bool(getattr(gen.tok.hf, "chat_template", None))


# --------------------------------------------------------------------------------------------- prompts, filters


def request_text(prompt: Content) -> str:
    """A prompt as text for quoting in a request: a conversation becomes "User: ...\\nAssistant: ..." lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def critique_messages(request: str, reply: str, ask: str, few_shot: bool = True) -> list[dict]:
    """Chat turns asking for a critique of ``reply`` (to ``request``) by the critique request ``ask``."""
    turns = [{"role": "system", "content": CRITIC}]
    for req, rep, crit_ask, crit, _, _ in FEW_SHOT if few_shot else ():
        turns += [
            {"role": "user", "content": _critique_block(req, rep, crit_ask)},
            {"role": "assistant", "content": crit},
        ]
    return turns + [{"role": "user", "content": _critique_block(request, reply, ask)}]


def revision_messages(request: str, reply: str, critique: str, ask: str, few_shot: bool = True) -> list[dict]:
    """Chat turns asking for a revision of ``reply`` given ``critique``, by the revision request ``ask``."""
    turns = [{"role": "system", "content": REVISER}]
    for req, rep, _, crit, rev_ask, rev in FEW_SHOT if few_shot else ():
        turns += [{"role": "user", "content": _revision_block(req, rep, crit, rev_ask)},
                  {"role": "assistant", "content": rev}]  # fmt: skip
    return turns + [{"role": "user", "content": _revision_block(request, reply, critique, ask)}]


def _critique_block(request: str, reply: str, ask: str) -> str:
    return f"Request: {request}\n\nReply: {reply}\n\nReview task: {ask}"


def _revision_block(request: str, reply: str, critique: str, ask: str) -> str:
    return (
        f"Request: {request}\n\nReply: {reply}\n\nCritique: {critique}\n\nInstruction: {ask} Write only the new reply."
    )


def clean(text: str) -> str:
    """Generated text stripped of surrounding space and a leading label such as "Revised reply:"."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def check_revision(revision: str, previous: str, few_shot: bool = True) -> str | None:
    """Why ``revision`` cannot be a training target (a ``FILTERS`` reason but truncated), or None when it can.
    ``few_shot``: the worked examples were shown, so a revision repeating their text copied them."""
    if not revision.strip():
        return "empty"
    if words(revision) == words(previous):
        return "unchanged"
    if few_shot and set(ngrams(words(revision), COPY_NGRAM)) & _EXAMPLE_NGRAMS:
        return "copied_example"
    if has_loop(revision):
        return "looping"
    return None


# ------------------------------------------------------------------------------------------------------ the run


def run_revise(cfg: ReviseConfig, log: Callable = print) -> dict:
    """Run the supervised CAI phase of ``cfg`` and write its three outputs; returns the summary."""
    from alignkit.data.jsonl import write_jsonl
    from alignkit.generation import load_sampler

    cfg.validate()
    check_outputs([cfg.prompts], [cfg.out, cfg.chains_file, cfg.summary_file], cfg.overwrite)
    constitution = load_constitution(cfg.constitution).select(cfg.principles)
    records = load_prompts(cfg.prompts, cfg.prompt_field, cfg.limit)  # bad input fails before the model loads
    gen = load_sampler(cfg.model, cfg.device)
    chat = uses_chat(gen)
    n = len(records)

    def step(stage: str, r: int, idx: list[int], prompts: list, tokens: int) -> list:
        seeds = [derive_seed(cfg.seed, stage, r, i) for i in idx]
        return [c[0] for c in generate(gen, prompts, seeds, 1, tokens, cfg.temperature)]

    log(f"cai revise: {n} prompts from {cfg.prompts}, {cfg.rounds} round(s), model {cfg.model}")
    first = step("initial", 0, list(range(n)), [r["prompt"] for r in records], cfg.max_new_tokens)
    chains = [{"prompt": r["prompt"], "category": r["category"], "source": r["source"], "initial": clean(c.text),
               "rounds": [], "filtered": None} for r, c in zip(records, first)]  # fmt: skip
    current = [c["initial"] for c in chains]
    active = list(range(n))
    for rnd in range(cfg.rounds):
        if not active:
            break
        principles = {i: constitution.pick(cfg.seed, i, rnd) for i in active}
        requests = {i: request_text(records[i]["prompt"]) for i in active}
        asks = [critique_messages(requests[i], current[i], principles[i].critique, cfg.few_shot) for i in active]
        critiques = [clean(c.text) for c in step("critique", rnd, active, asks, cfg.critique_tokens)]
        asks = [revision_messages(requests[i], current[i], crit, principles[i].revision, cfg.few_shot)
                for i, crit in zip(active, critiques)]  # fmt: skip
        revisions = step("revision", rnd, active, asks, cfg.max_new_tokens)
        still = []
        for i, critique, completion in zip(active, critiques, revisions):
            revision = clean(completion.text)
            reason = check_revision(revision, current[i], cfg.few_shot)
            if reason is None and cfg.drop_truncated and completion.finish_reason == "length":
                reason = "truncated"
            chains[i]["rounds"].append({"principle": principles[i].name, "critique": critique, "revision": revision,
                                        "finish_reason": completion.finish_reason, "filtered": reason})  # fmt: skip
            if reason is None:
                current[i] = revision
                still.append(i)
            else:
                chains[i]["filtered"] = reason
        active = still
        log(f"round {rnd + 1}: {len(active)} of {n} chains still kept")
    kept = [i for i in range(n) if chains[i]["filtered"] is None]
    sft = []
    for i in kept:
        prompt, completion = as_example(records[i]["prompt"], current[i], chat)
        chains[i]["final"] = current[i]
        sft.append(
            {
                "prompt": prompt,
                "completion": completion,
                "category": records[i]["category"],
                "principles": [r["principle"] for r in chains[i]["rounds"]],
                "source": records[i]["source"],
            }
        )
    summary = {
        "kind": "cai_revise", "model": cfg.model, "prompts": cfg.prompts, "rounds": cfg.rounds, "seed": cfg.seed,
        "temperature": cfg.temperature, "constitution": constitution.source, "total": n, "kept": len(kept),
        "filtered": {reason: sum(c["filtered"] == reason for c in chains) for reason in FILTERS},
        "truncated_kept": sum(chains[i]["rounds"][-1]["finish_reason"] == "length" for i in kept),
        "principles": dict(Counter(r["principle"] for c in chains for r in c["rounds"])),
        "initial_text": text_summary([c["initial"] for c in chains]),
        "final_text": text_summary([current[i] for i in kept]),
        "outputs": {"sft": cfg.out, "chains": cfg.chains_file, "summary": cfg.summary_file},
    }  # fmt: skip
    write_jsonl(cfg.out, sft)
    write_jsonl(cfg.chains_file, chains)
    write_json_atomic(cfg.summary_file, summary, indent=2)
    return summary


def describe_revise(summary: dict) -> list[str]:
    """Printable lines of a ``run_revise`` summary."""
    filtered = ", ".join(f"{k} {v}" for k, v in summary["filtered"].items())
    return [
        f"{summary['total']} prompts: kept {summary['kept']}, filtered {sum(summary['filtered'].values())} "
        f"({filtered}); {summary['truncated_kept']} kept revisions hit max_new_tokens",
        f"repetition (4-gram) initial {summary['initial_text']['repetition_4gram']:.3f} -> final "
        f"{summary['final_text']['repetition_4gram']:.3f}",
        f"wrote {summary['outputs']['sft']}, {summary['outputs']['chains']}, {summary['outputs']['summary']}",
    ]
