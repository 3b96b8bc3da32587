"""Tokenization: exact prompt/completion boundaries, BOS/EOS rules, length limits and collation."""

from __future__ import annotations

import pytest
import torch
from helpers import BOS_ID, DEFAULT_SYSTEM, IM_END_ID, IM_START_ID, PAD_ID, VOCAB, make_word_tokenizer, word_ids

from alignkit.data import (
    BinaryExample,
    PairwiseExample,
    SFTExample,
    TokenizedCompletion,
    TokenizedPair,
    Tokenizer,
    TruncationStats,
    collate_completions,
    collate_pairs,
    pad_sequences,
    tokenize_completions,
    tokenize_pairs,
)
from alignkit.data.tokenize import fit_lengths
from alignkit.errors import DataError

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def user(text):
    return ({"role": "user", "content": text},)


def assistant(*texts):
    return tuple({"role": "assistant", "content": t} for t in texts)


def _chat_ids(hf, messages, **kw):
    out = hf.apply_chat_template(list(messages), tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# ============================================================================================ embedded tokenizer


@pytest.fixture(scope="module")
def smol_hf():
    from alignkit.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def smol(smol_hf):
    return Tokenizer(smol_hf)


def test_embedded_special_ids(smol, smol_hf):
    assert smol_hf.convert_ids_to_tokens(smol.eos_id) == "<|im_end|>"
    assert smol.pad_id == smol.eos_id  # SmolLM2 pads with its EOS
    assert smol.auto_bos is None  # the tokenizer adds no BOS by itself


def test_embedded_default_system_prompt_appears_once(smol, smol_hf):
    prompt_ids, completion_ids = smol.split(user("What is the capital of France?"), assistant("Paris."))
    text = smol_hf.decode(prompt_ids + completion_ids)
    assert text.count(SMOL_SYSTEM) == 1
    assert text.count("<|im_start|>system") == 1
    assert text.startswith("<|im_start|>system\n" + SMOL_SYSTEM)


def test_embedded_explicit_system_replaces_default(smol, smol_hf):
    prompt = ({"role": "system", "content": "Be terse."},) + user("Hi")
    prompt_ids, completion_ids = smol.split(prompt, assistant("Hello."))
    text = smol_hf.decode(prompt_ids + completion_ids)
    assert SMOL_SYSTEM not in text and text.count("Be terse.") == 1


def test_embedded_prompt_ids_equal_chat_template_with_generation_prompt(smol, smol_hf):
    prompt = user("What is the capital of France?")
    prompt_ids, _ = smol.split(prompt, assistant("Paris is the capital."))
    assert prompt_ids == _chat_ids(smol_hf, prompt, add_generation_prompt=True)
    assert smol_hf.decode(prompt_ids).endswith("<|im_start|>assistant\n")


def test_embedded_completion_ends_with_one_eos(smol, smol_hf):
    _, completion_ids = smol.split(user("What is the capital of France?"), assistant("Paris is the capital."))
    assert completion_ids[-1] == smol.eos_id
    assert completion_ids.count(smol.eos_id) == 1
    assert smol_hf.decode(completion_ids) == "Paris is the capital.<|im_end|>"


def test_embedded_no_bos_added(smol, smol_hf):
    prompt_ids, _ = smol.split(user("Hi"), assistant("Hello."))
    im_start = smol_hf.convert_tokens_to_ids("<|im_start|>")
    # the template's own first token, once: nothing was prepended
    assert prompt_ids[0] == im_start and prompt_ids[1] != im_start
    text_prompt, text_completion = smol.split("Hello there,", " general Kenobi")
    assert text_prompt == smol_hf("Hello there,", add_special_tokens=False).input_ids
    assert text_completion == smol_hf(" general Kenobi", add_special_tokens=False).input_ids + [smol.eos_id]


def test_embedded_full_sequence_equals_rendered_conversation(smol, smol_hf):
    prompt, completion = user("Name a colour."), assistant("Blue.")
    prompt_ids, completion_ids = smol.split(prompt, completion)
    full = _chat_ids(smol_hf, prompt + completion)
    # the template writes a newline after the last <|im_end|>, which is dropped
    assert prompt_ids + completion_ids == full[: len(prompt_ids) + len(completion_ids)]
    assert smol_hf.decode(full[len(prompt_ids) + len(completion_ids) :]) == "\n"


def test_embedded_multi_turn_completion(smol, smol_hf):
    prompt_ids, completion_ids = smol.split(user("Hi"), assistant("One.", "Two."))
    assert completion_ids[-1] == smol.eos_id and completion_ids.count(smol.eos_id) == 2
    assert smol_hf.decode(completion_ids) == "One.<|im_end|>\n<|im_start|>assistant\nTwo.<|im_end|>"


def test_embedded_tokenize_pairs_shares_prompt(smol, smol_hf):
    ex = PairwiseExample(user("Pick a number"), assistant("Seven."), assistant("I refuse."), "f:1")
    pairs, stats = tokenize_pairs([ex], smol, max_length=512, max_prompt_length=None)
    assert len(pairs) == 1 and stats == TruncationStats()
    pair = pairs[0]
    assert pair.source == "f:1"
    assert smol_hf.decode(pair.chosen_ids) == "Seven.<|im_end|>"
    assert smol_hf.decode(pair.rejected_ids) == "I refuse.<|im_end|>"
    assert pair.prompt_ids == _chat_ids(smol_hf, user("Pick a number"), add_generation_prompt=True)


# ============================================================================================ tiny tokenizers


@pytest.fixture(scope="module")
def bos_tok():
    return Tokenizer(make_word_tokenizer(auto_bos=True))


@pytest.fixture(scope="module")
def nobos_tok():
    return Tokenizer(make_word_tokenizer(auto_bos=False))


def _system_ids():
    return word_ids(f"<|im_start|> system {DEFAULT_SYSTEM} <|im_end|>")


def test_tiny_tokenizer_properties(bos_tok, nobos_tok):
    assert bos_tok.auto_bos == BOS_ID and bos_tok.eos_id == IM_END_ID and bos_tok.pad_id == PAD_ID
    assert nobos_tok.auto_bos is None and nobos_tok.hf.bos_token_id is None and nobos_tok.eos_id == IM_END_ID
    assert bos_tok.hf("hello").input_ids == [BOS_ID, VOCAB["hello"]]
    assert nobos_tok.hf("hello").input_ids == [VOCAB["hello"]]


def test_auto_bos_text_one_bos(bos_tok):
    prompt_ids, completion_ids = bos_tok.split("hello there", "hi !")
    assert prompt_ids == [BOS_ID] + word_ids("hello there")
    assert completion_ids == word_ids("hi !") + [IM_END_ID]


def test_auto_bos_text_already_starting_with_bos(bos_tok):
    prompt_ids, _ = bos_tok.split("<s> hello there", "hi")
    assert prompt_ids == [BOS_ID] + word_ids("hello there")


def test_auto_bos_empty_text_prompt_gets_bos(bos_tok):
    prompt_ids, completion_ids = bos_tok.split("", "hello there")
    assert prompt_ids == [BOS_ID]
    assert completion_ids == word_ids("hello there") + [IM_END_ID]


def test_auto_bos_conversation_one_bos(bos_tok):
    prompt_ids, completion_ids = bos_tok.split(user("hello there"), assistant("hi !"))
    expected_prompt = (
        [BOS_ID]
        + _system_ids()
        + word_ids("<|im_start|> user hello there <|im_end|>")
        + word_ids("<|im_start|> assistant")
    )
    assert prompt_ids == expected_prompt
    assert completion_ids == word_ids("hi !") + [IM_END_ID]
    assert (prompt_ids + completion_ids).count(BOS_ID) == 1


def test_template_writing_bos_still_one_bos():
    tok = Tokenizer(make_word_tokenizer(auto_bos=True, template_bos=True))
    rendered = tok.render_prompt(user("hello"))
    assert rendered.startswith("<s><|im_start|>system")
    prompt_ids, completion_ids = tok.split(user("hello"), assistant("hi"))
    assert prompt_ids[0] == BOS_ID and prompt_ids[1] == IM_START_ID
    assert (prompt_ids + completion_ids).count(BOS_ID) == 1
    assert completion_ids == [VOCAB["hi"], IM_END_ID]


def test_no_bos_tokenizer(nobos_tok):
    prompt_ids, completion_ids = nobos_tok.split(user("hello there"), assistant("hi !"))
    assert prompt_ids[0] == IM_START_ID
    assert prompt_ids == _system_ids() + word_ids("<|im_start|> user hello there <|im_end|> <|im_start|> assistant")
    assert completion_ids == word_ids("hi !") + [IM_END_ID]
    text_prompt, text_completion = nobos_tok.split("hello there", "hi")
    assert text_prompt == word_ids("hello there")
    assert text_completion == [VOCAB["hi"], IM_END_ID]


def test_default_system_prompt_once_tiny(nobos_tok):
    prompt_ids, completion_ids = nobos_tok.split(user("hello") + assistant("hi") + user("why"), assistant("yes"))
    full = prompt_ids + completion_ids
    assert full.count(VOCAB["system"]) == 1
    assert full.count(IM_START_ID) == 5  # system, user, assistant, user, generation prompt
    assert completion_ids == [VOCAB["yes"], IM_END_ID]


def test_text_completion_eos_not_duplicated_and_tail_dropped(nobos_tok):
    assert nobos_tok.split("hello", "hi <|im_end|>")[1] == [VOCAB["hi"], IM_END_ID]
    assert nobos_tok.split("hello", "hi <|im_end|> there")[1] == [VOCAB["hi"], IM_END_ID]


def test_chat_data_without_template_is_a_data_error():
    tok = Tokenizer(make_word_tokenizer(auto_bos=False, chat_template=False))
    with pytest.raises(DataError, match="no chat template"):
        tok.split(user("hello"), assistant("hi"))
    with pytest.raises(DataError, match="no chat template"):
        tok.render_prompt(user("hello"))
    # plain text still works
    assert tok.split("hello", "hi") == ([VOCAB["hello"]], [VOCAB["hi"], IM_END_ID])


def test_template_whose_prompt_is_not_a_prefix_is_a_data_error():
    hf = make_word_tokenizer(auto_bos=False)
    hf.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(DataError, match="completion boundary"):
        Tokenizer(hf).split(user("hello"), assistant("hi"))


def test_tokenizer_without_eos_is_a_data_error():
    hf = make_word_tokenizer(auto_bos=False)
    hf.eos_token = None
    with pytest.raises(DataError, match="no EOS"):
        Tokenizer(hf)


# ============================================================================================ lengths

LONG_PROMPT = "one two three four five six seven eight nine ten"  # 10 words (+ BOS)


def _pair(source="f:1", prompt=LONG_PROMPT, chosen="yes", rejected="no !"):
    return PairwiseExample(prompt, chosen, rejected, source)


def test_within_limits_unchanged(bos_tok):
    pairs, stats = tokenize_pairs([_pair()], bos_tok, max_length=64, max_prompt_length=None)
    assert pairs == [
        TokenizedPair(
            [BOS_ID] + word_ids(LONG_PROMPT), [VOCAB["yes"], IM_END_ID], [VOCAB["no"], VOCAB["!"], IM_END_ID], "f:1"
        )
    ]
    assert stats == TruncationStats()


def test_keep_end_keeps_prompt_end_and_bos(bos_tok):
    # 11 prompt tokens + 3 > 8: the prompt is cut to max_length // 2 = 4, keeping BOS and its last 3 tokens
    pairs, stats = tokenize_pairs([_pair()], bos_tok, max_length=8, max_prompt_length=None, keep="keep_end")
    assert pairs[0].prompt_ids == [BOS_ID] + word_ids("eight nine ten")
    assert pairs[0].chosen_ids == [VOCAB["yes"], IM_END_ID]
    assert pairs[0].rejected_ids == [VOCAB["no"], VOCAB["!"], IM_END_ID]
    assert (stats.prompts_truncated, stats.completions_truncated, stats.skipped) == (1, 0, 0)


def test_keep_end_without_bos(nobos_tok):
    pairs, _ = tokenize_pairs([_pair()], nobos_tok, max_length=8, max_prompt_length=None, keep="keep_end")
    assert pairs[0].prompt_ids == word_ids("seven eight nine ten")


def test_keep_start_keeps_prompt_start(bos_tok):
    pairs, stats = tokenize_pairs([_pair()], bos_tok, max_length=8, max_prompt_length=None, keep="keep_start")
    assert pairs[0].prompt_ids == [BOS_ID] + word_ids("one two three")
    assert stats.prompts_truncated == 1


def test_completions_cut_to_remaining_budget(bos_tok):
    # explicit max_prompt_length 6 leaves 2 tokens: "no ! <eos>" is cut to "no !", "yes <eos>" fits
    pairs, stats = tokenize_pairs([_pair()], bos_tok, max_length=8, max_prompt_length=6, keep="keep_end")
    assert pairs[0].prompt_ids == [BOS_ID] + word_ids("six seven eight nine ten")
    assert pairs[0].chosen_ids == [VOCAB["yes"], IM_END_ID]
    assert pairs[0].rejected_ids == [VOCAB["no"], VOCAB["!"]]
    assert (stats.prompts_truncated, stats.completions_truncated) == (1, 1)
    assert all(len(pairs[0].prompt_ids) + len(c) <= 8 for c in (pairs[0].chosen_ids, pairs[0].rejected_ids))


def test_short_prompt_long_completion_cuts_completion_only(nobos_tok):
    ex = _pair(prompt="hello", chosen=LONG_PROMPT, rejected="no")
    pairs, stats = tokenize_pairs([ex], nobos_tok, max_length=8, max_prompt_length=None)
    assert pairs[0].prompt_ids == [VOCAB["hello"]]
    assert pairs[0].chosen_ids == word_ids("one two three four five six seven")
    assert pairs[0].rejected_ids == [VOCAB["no"], IM_END_ID]
    assert (stats.prompts_truncated, stats.completions_truncated) == (0, 1)


def test_truncation_counts_over_several_records(bos_tok):
    examples = [_pair("a"), _pair("b", prompt="hello"), _pair("c")]
    pairs, stats = tokenize_pairs(examples, bos_tok, max_length=8, max_prompt_length=None)
    assert [p.source for p in pairs] == ["a", "b", "c"]
    assert stats.prompts_truncated == 2 and stats.completions_truncated == 0 and stats.skipped == 0
    assert stats.summary() == "2 prompt(s) truncated, 0 completion(s) truncated, 0 record(s) skipped for length"


def test_overlong_skip(bos_tok):
    examples = [_pair("a"), _pair("b", prompt="hello"), _pair("c")]
    pairs, stats = tokenize_pairs(examples, bos_tok, max_length=8, max_prompt_length=None, policy="skip")
    assert [p.source for p in pairs] == ["b"]
    assert stats.skipped == 2 and stats.skipped_sources == ["a", "c"]
    assert stats.prompts_truncated == 0 and stats.completions_truncated == 0


def test_overlong_error_names_source(bos_tok):
    with pytest.raises(DataError) as e:
        tokenize_pairs([_pair("train.jsonl:7")], bos_tok, max_length=8, max_prompt_length=None, policy="error")
    assert "train.jsonl:7" in str(e.value) and "max_length=8" in str(e.value)
    # within limits, "error" does not complain
    pairs, _ = tokenize_pairs([_pair("ok")], bos_tok, max_length=64, max_prompt_length=None, policy="error")
    assert len(pairs) == 1


def test_fit_lengths_exact_boundary():
    stats = TruncationStats()
    prompt, comps = fit_lengths([1, 2, 3], [[4, 5], [6]], 5, None, "keep_end", "error", stats, "s")
    assert (prompt, comps) == ([1, 2, 3], [[4, 5], [6]]) and stats == TruncationStats()


def test_fit_lengths_bos_only_kept_when_first():
    stats = TruncationStats()
    prompt, _ = fit_lengths([9, 8, 7, 6, 5, 4], [[1]], 4, 3, "keep_end", "truncate", stats, "s", bos_id=2)
    assert prompt == [6, 5, 4]  # no leading BOS: just the last 3
    prompt, _ = fit_lengths([2, 8, 7, 6, 5, 4], [[1]], 4, 3, "keep_end", "truncate", stats, "s", bos_id=2)
    assert prompt == [2, 5, 4]


def test_tokenize_completions_binary_and_sft(nobos_tok):
    items, stats = tokenize_completions(
        [
            BinaryExample("hello", "hi", True, "a"),
            BinaryExample("hello", "bad", False, "b"),
        ],
        nobos_tok,
        max_length=32,
        max_prompt_length=None,
    )
    assert items[0] == TokenizedCompletion([VOCAB["hello"]], [VOCAB["hi"], IM_END_ID], "a", True)
    assert items[1].label is False and items[1].completion_ids == [VOCAB["bad"], IM_END_ID]
    sft, _ = tokenize_completions([SFTExample("", "hello there", "c")], nobos_tok, 32, None)
    assert sft == [TokenizedCompletion([], word_ids("hello there") + [IM_END_ID], "c", None)]


# ============================================================================================ collation

EOS = 2  # pad with EOS, like SmolLM2


def _pairs_with_eos_inside():
    return [
        TokenizedPair([10, 11, 12], [20, EOS], [30, 31, EOS], "a"),
        TokenizedPair([13], [21, EOS, 22, EOS], [32, EOS], "b"),
    ]


def test_collate_pairs_layout_and_masks_with_pad_equal_eos():
    batch = collate_pairs(_pairs_with_eos_inside(), pad_id=EOS)
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask"}
    assert all(t.shape == (4, 6) and t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [
        [10, 11, 12, 20, EOS, EOS],  # chosen a (last column is padding)
        [13, 21, EOS, 22, EOS, EOS],  # chosen b
        [10, 11, 12, 30, 31, EOS],  # rejected a
        [13, 32, EOS, EOS, EOS, EOS],  # rejected b
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0],
    ]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 0, 1, 1, 0],
        [0, 1, 1, 1, 1, 0],  # the EOS inside the completion is scored
        [0, 0, 0, 1, 1, 1],
        [0, 1, 1, 0, 0, 0],
    ]


def test_collate_pads_to_longest_in_batch_not_max_length(bos_tok):
    examples = [
        _pair("a", prompt="hello", chosen="hi", rejected="no"),
        _pair("b", prompt="hello there", chosen="yes yes", rejected="no"),
    ]
    pairs, _ = tokenize_pairs(examples, bos_tok, max_length=1024, max_prompt_length=None)
    batch = collate_pairs(pairs, pad_id=bos_tok.pad_id)
    longest = max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs)
    assert longest == 6 and batch["input_ids"].shape == (4, 6)
    assert batch["input_ids"][0, 4:].tolist() == [PAD_ID, PAD_ID]  # [BOS hello hi EOS] + padding


def test_collate_pad_to_multiple_of():
    batch = collate_pairs(_pairs_with_eos_inside(), pad_id=0, pad_to_multiple_of=4)
    assert batch["input_ids"].shape == (4, 8)
    assert batch["attention_mask"].sum(1).tolist() == [5, 5, 6, 3]
    assert batch["input_ids"][2, 6:].tolist() == [0, 0]
    batch = pad_sequences([[1, 2]], [[3, 4]], pad_id=0, pad_to_multiple_of=4)
    assert batch["input_ids"].shape == (1, 4)  # already a multiple: no extra padding


def test_collate_completions_labels():
    items = [TokenizedCompletion([5, 6], [7, EOS], "a", True), TokenizedCompletion([5], [8, 9, EOS], "b", False)]
    batch = collate_completions(items, pad_id=EOS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, EOS], [5, 8, 9, EOS]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [True, False] and batch["labels"].dtype == torch.bool


def test_collate_completions_without_labels():
    items = [TokenizedCompletion([5], [7, EOS], "a"), TokenizedCompletion([], [8, EOS], "b")]
    batch = collate_completions(items, pad_id=0)
    assert "labels" not in batch
    assert batch["input_ids"].tolist() == [[5, 7, EOS], [8, EOS, 0]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1], [1, 1, 0]]
