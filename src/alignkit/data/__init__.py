"""Data path, first half: record -> validated example -> tokens -> batch."""

from alignkit.data.collate import collate_completions, collate_kto, collate_pairs, collate_samples, pad_sequences
from alignkit.data.formats import (
    BinaryExample,
    PairwiseExample,
    PromptExample,
    SFTExample,
    as_chat,
    parse_hh_transcript,
    to_binary,
    to_pairwise,
    to_prompt,
    to_sft,
    validate_records,
)
from alignkit.data.jsonl import read_jsonl, write_jsonl
from alignkit.data.readers import read_records
from alignkit.data.tokenize import (
    KTOItem,
    Sample,
    TokenizedCompletion,
    TokenizedPair,
    TokenizedPrompt,
    Tokenizer,
    TruncationStats,
    tokenize_completions,
    tokenize_kto,
    tokenize_pairs,
    tokenize_prompts,
)

__all__ = [
    "KTOItem",
    "Sample",
    "collate_kto",
    "collate_samples",
    "read_jsonl",
    "tokenize_kto",
    "write_jsonl",
    "BinaryExample",
    "PairwiseExample",
    "PromptExample",
    "SFTExample",
    "as_chat",
    "Tokenizer",
    "TokenizedCompletion",
    "TokenizedPair",
    "TokenizedPrompt",
    "TruncationStats",
    "collate_completions",
    "collate_pairs",
    "pad_sequences",
    "parse_hh_transcript",
    "read_records",
    "to_binary",
    "to_pairwise",
    "to_prompt",
    "to_sft",
    "tokenize_completions",
    "tokenize_pairs",
    "tokenize_prompts",
    "validate_records",
]
