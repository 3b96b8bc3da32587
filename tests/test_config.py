"""Typed configs: YAML + --set overrides, coercion, defaults, and errors that name the field."""

from __future__ import annotations

import pytest

from alignkit.config import (
    LoRAConfig,
    PreferenceConfig,
    PreferenceMethodConfig,
    SFTConfig,
    from_dict,
    load_config,
    save_config,
)
from alignkit.errors import ConfigError

TRAIN = ["data.train=pairs.jsonl"]


def _yaml(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_with_nested_sections(tmp_path):
    path = _yaml(
        tmp_path,
        """
model:
  name: some/model
  dtype: bf16
data:
  train: pairs.jsonl
  max_length: 256
  max_prompt_length: 128
  overlong: skip
train:
  learning_rate: 1e-5
  batch_size: 2
  adam_betas: [0.9, 0.95]
  max_grad_norm: null
method:
  loss: ipo
  beta: 0.5
""",
    )
    cfg = load_config(PreferenceConfig, path)
    assert cfg.model.name == "some/model" and cfg.model.dtype == "bf16"
    assert cfg.data.train == "pairs.jsonl" and cfg.data.max_length == 256 and cfg.data.max_prompt_length == 128
    assert cfg.data.overlong == "skip"
    assert cfg.train.learning_rate == 1e-5 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.batch_size == 2 and cfg.train.adam_betas == [0.9, 0.95] and cfg.train.max_grad_norm is None
    assert cfg.method.loss == "ipo" and cfg.method.beta == 0.5
    # untouched fields keep their defaults
    assert cfg.train.seed == 42 and cfg.data.prompt_truncation == "keep_end" and cfg.model.device == "auto"


def test_set_overrides_with_dotted_keys_and_coercion(tmp_path):
    path = _yaml(tmp_path, "data:\n  train: a.jsonl\ntrain:\n  batch_size: 4\n  eval_steps: 10\n")
    cfg = load_config(
        PreferenceConfig,
        path,
        [
            "train.learning_rate=1e-5",
            "train.batch_size=8",
            "train.eval_steps=null",
            "data.train=b.jsonl",
            "method.loss=simpo",
            "train.epochs=2",
        ],
    )
    assert cfg.train.learning_rate == 1e-5 and type(cfg.train.learning_rate) is float
    assert cfg.train.batch_size == 8 and type(cfg.train.batch_size) is int
    assert cfg.train.eval_steps is None
    assert cfg.data.train == "b.jsonl"  # --set wins over the file
    assert cfg.method.loss == "simpo"
    assert cfg.train.epochs == 2.0 and type(cfg.train.epochs) is float


def test_set_overrides_without_file():
    cfg = load_config(SFTConfig, None, ["data.train=x.jsonl", "train.report_to=tensorboard", "model.name=m"])
    assert cfg.data.train == "x.jsonl"
    assert cfg.train.report_to == ["tensorboard"]  # a single string becomes a list
    assert cfg.model.name == "m"


def test_int_field_accepts_whole_float_string():
    cfg = load_config(SFTConfig, None, TRAIN + ["train.batch_size=4.0", "train.max_steps='12'"])
    assert cfg.train.batch_size == 4 and type(cfg.train.batch_size) is int
    assert cfg.train.max_steps == 12


def test_lora_empty_mapping_enables_defaults(tmp_path):
    cfg = load_config(SFTConfig, _yaml(tmp_path, "data: {train: a.jsonl}\nlora: {}\n"))
    assert cfg.lora == LoRAConfig()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (16, 32, 0.05, "all-linear")


def test_lora_absent_means_full_fine_tuning(tmp_path):
    assert load_config(SFTConfig, _yaml(tmp_path, "data: {train: a.jsonl}\n")).lora is None
    assert load_config(SFTConfig, _yaml(tmp_path, "data: {train: a.jsonl}\nlora: null\n", "b.yaml")).lora is None


def test_lora_set_override():
    cfg = load_config(SFTConfig, None, TRAIN + ["lora.r=8", "lora.target_modules=[q_proj, v_proj]"])
    assert cfg.lora.r == 8 and cfg.lora.alpha == 32 and cfg.lora.target_modules == ["q_proj", "v_proj"]


def test_list_defaults_fresh_when_section_given():
    a = load_config(SFTConfig, None, TRAIN + ["train.seed=1"])
    b = load_config(SFTConfig, None, TRAIN + ["train.seed=2"])
    assert a.train.adam_betas == b.train.adam_betas == [0.9, 0.999]
    assert a.train.adam_betas is not b.train.adam_betas


def test_list_defaults_not_shared_when_section_absent():
    # No `train` section: RunConfig.train comes from its default factory. Its list fields must still be fresh
    # objects, or mutating one config (cfg.train.report_to.append(...)) changes every later config in the process.
    a = load_config(SFTConfig, None, TRAIN)
    b = load_config(PreferenceConfig, None, TRAIN)
    shared_betas = a.train.adam_betas is b.train.adam_betas
    shared_report = a.train.report_to is b.train.report_to
    a.train.report_to.append("tensorboard")
    try:
        leaked = list(load_config(SFTConfig, None, TRAIN).train.report_to)
    finally:
        a.train.report_to.remove("tensorboard")  # never leave the module-level default polluted for other tests
    assert leaked == []
    assert not shared_betas and not shared_report


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(PreferenceConfig, None, TRAIN + ["lora.r=4", "method.loss=orpo", "train.learning_rate=3e-4"])
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    assert load_config(PreferenceConfig, path) == cfg


# ------------------------------------------------------------------------------------------------ errors


def _error(cls=PreferenceConfig, path=None, overrides=TRAIN):
    with pytest.raises(ConfigError) as e:
        load_config(cls, path, list(overrides))
    return str(e.value)


def test_unknown_field_did_you_mean():
    msg = _error(overrides=TRAIN + ["train.learning_rat=1e-5"])
    assert "unknown field 'train.learning_rat'" in msg and "did you mean 'train.learning_rate'?" in msg


def test_unknown_section_did_you_mean(tmp_path):
    msg = _error(path=_yaml(tmp_path, "dat:\n  train: a.jsonl\n"), overrides=[])
    assert "unknown field 'dat'" in msg and "did you mean 'data'?" in msg
    assert str(tmp_path / "cfg.yaml") in msg


def test_unknown_field_without_close_match_lists_known():
    msg = _error(overrides=TRAIN + ["train.zzzzzz=1"])
    assert "unknown field 'train.zzzzzz'" in msg and "known fields:" in msg and "learning_rate" in msg


@pytest.mark.parametrize(
    "override,field,expected",
    [
        ("train.batch_size=abc", "train.batch_size", "a whole number"),
        ("train.batch_size=2.5", "train.batch_size", "a whole number"),
        ("train.batch_size=true", "train.batch_size", "a whole number"),
        ("train.learning_rate=fast", "train.learning_rate", "a number"),
        ("train.learning_rate=[1]", "train.learning_rate", "a number"),
        ("model.trust_remote_code=1", "model.trust_remote_code", "true or false"),
        ("model.name=[a, b]", "model.name", "a string"),
        ("train.adam_betas={a: 1}", "train.adam_betas", "a list"),
    ],
)
def test_wrong_type_names_field(override, field, expected):
    msg = _error(overrides=TRAIN + [override])
    assert f"field '{field}'" in msg and f"expected {expected}" in msg


def test_null_for_non_optional_field():
    msg = _error(overrides=TRAIN + ["train.batch_size=null"])
    assert "field 'train.batch_size' may not be null" in msg


def test_section_must_be_mapping():
    msg = _error(overrides=TRAIN + ["train=5"])
    assert "'train' must be a mapping" in msg


@pytest.mark.parametrize(
    "override,field,guess",
    [
        ("data.overlong=skp", "data.overlong", "skip"),
        ("method.loss=dpoo", "method.loss", "dpo"),
        ("model.dtype=bf61", "model.dtype", "bf16"),
    ],
)
def test_invalid_choice_with_suggestion(override, field, guess):
    msg = _error(overrides=TRAIN + [override])
    assert f"field '{field}'" in msg and "must be one of" in msg and f"did you mean '{guess}'?" in msg


def test_invalid_choice_without_suggestion():
    msg = _error(overrides=TRAIN + ["method.loss=zzzzzzzz"])
    assert "field 'method.loss'" in msg and "did you mean" not in msg
    assert "dpo" in msg and "orpo" in msg


def test_missing_data_train(tmp_path):
    msg = _error(path=_yaml(tmp_path, "train:\n  batch_size: 2\n"), overrides=[])
    assert "field 'data.train'" in msg and "set data.train" in msg


@pytest.mark.parametrize("max_prompt", [64, 100])
def test_max_prompt_length_not_below_max_length(max_prompt):
    msg = _error(overrides=TRAIN + ["data.max_length=64", f"data.max_prompt_length={max_prompt}"])
    assert "field 'data.max_prompt_length'" in msg and "below data.max_length (64)" in msg


@pytest.mark.parametrize(
    "override,field",
    [
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.warmup_ratio=1", "train.warmup_ratio"),
        ("train.adam_betas=[0.9]", "train.adam_betas"),
        ("train.report_to=[nope]", "train.report_to"),
        ("data.max_length=4", "data.max_length"),
        ("data.eval_fraction=1.5", "data.eval_fraction"),
        ("lora.r=0", "lora.r"),
        ("lora.dropout=1", "lora.dropout"),
        ("lora.target_modules=[]", "lora.target_modules"),
        ("method.beta=0", "method.beta"),
        ("method.label_smoothing=0.5", "method.label_smoothing"),
        ("method.sft_weight=-1", "method.sft_weight"),
    ],
)
def test_validation_names_field(override, field):
    msg = _error(overrides=TRAIN + [override])
    assert f"field '{field}'" in msg and "Fix:" in msg


@pytest.mark.parametrize("override", ["train.adam_betas=[a, b]", "train.adam_betas=[0.9, null]"])
def test_non_numeric_adam_betas_is_a_config_error(override):
    # a wrong element type inside the list must be reported like every other bad value, not as a TypeError
    msg = _error(overrides=TRAIN + [override])
    assert "field 'train.adam_betas'" in msg


@pytest.mark.parametrize("value", [0, -3])
def test_max_examples_must_be_positive(value):
    # records[:limit] with limit -3 would silently drop the last 3 records; 0 would read nothing
    msg = _error(overrides=TRAIN + [f"data.max_examples={value}"])
    assert "field 'data.max_examples'" in msg


def test_robust_needs_label_smoothing():
    msg = _error(overrides=TRAIN + ["method.loss=robust"])
    assert "field 'method.label_smoothing'" in msg
    cfg = load_config(PreferenceConfig, None, TRAIN + ["method.loss=robust", "method.label_smoothing=0.1"])
    assert cfg.method.label_smoothing == 0.1


def test_ref_model_with_reference_free_loss():
    msg = _error(overrides=TRAIN + ["method.loss=simpo", "method.ref_model=other/model"])
    assert "method.ref_model" in msg and "simpo" in msg


def test_invalid_yaml(tmp_path):
    path = _yaml(tmp_path, "data:\n  train: [unclosed\n")
    msg = _error(path=path, overrides=[])
    assert str(path) in msg and "not valid YAML" in msg


def test_top_level_not_a_mapping(tmp_path):
    path = _yaml(tmp_path, "- a\n- b\n")
    msg = _error(path=path, overrides=[])
    assert str(path) in msg and "top level must be a mapping" in msg


def test_empty_yaml_file_uses_defaults_then_needs_data(tmp_path):
    path = _yaml(tmp_path, "")
    assert "field 'data.train'" in _error(path=path, overrides=[])
    cfg = load_config(SFTConfig, path, TRAIN)
    assert cfg.data.train == "pairs.jsonl"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = _error(path=path, overrides=[])
    assert str(path) in msg and "does not exist" in msg


@pytest.mark.parametrize("override", ["train.learning_rate", "=5", " =5", "noequals"])
def test_bad_set_syntax(override):
    msg = _error(overrides=TRAIN + [override])
    assert f"--set {override!r}" in msg and "section.field=value" in msg


def test_error_mentions_set_overrides_source(tmp_path):
    path = _yaml(tmp_path, "data: {train: a.jsonl}\n")
    with pytest.raises(ConfigError) as e:
        load_config(PreferenceConfig, path, ["train.batch_size=0"])
    assert str(e.value).startswith(f"{path} (with --set overrides): field 'train.batch_size'")


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError, match="'config' must be a mapping"):
        from_dict(SFTConfig, [1, 2], "here")


# ------------------------------------------------------------------------------------------------ method defaults


@pytest.mark.parametrize(
    "loss,beta", [("dpo", 0.1), ("ipo", 0.1), ("hinge", 0.1), ("robust", 0.1), ("orpo", 0.1), ("simpo", 2.0)]
)
def test_resolved_beta_defaults(loss, beta):
    assert PreferenceMethodConfig(loss=loss).resolved_beta == beta
    assert PreferenceMethodConfig(loss=loss, beta=0.7).resolved_beta == 0.7


@pytest.mark.parametrize(
    "loss,weight", [("dpo", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.0), ("simpo", 0.0), ("orpo", 1.0)]
)
def test_resolved_sft_weight_defaults(loss, weight):
    assert PreferenceMethodConfig(loss=loss).resolved_sft_weight == weight
    assert PreferenceMethodConfig(loss=loss, sft_weight=0.25).resolved_sft_weight == 0.25


def test_explicit_zero_sft_weight_for_orpo_is_kept():
    assert PreferenceMethodConfig(loss="orpo", sft_weight=0.0).resolved_sft_weight == 0.0


# ------------------------------------------------------------------------------------------------ make_config


def test_make_config_sets_loss_from_method_name(tmp_path):
    from alignkit.train import make_config

    cfg = make_config("ipo", overrides=["data.train=pairs.jsonl", "method.beta=0.2"])
    assert isinstance(cfg, PreferenceConfig)
    assert cfg.method.loss == "ipo" and cfg.method.beta == 0.2
    # the method name wins over the loss in the file
    path = _yaml(tmp_path, "data: {train: a.jsonl}\nmethod: {loss: dpo}\n")
    assert make_config("hinge", path).method.loss == "hinge"


def test_make_config_sft_and_sections():
    from alignkit.train import make_config

    cfg = make_config("sft", data={"train": "sft.jsonl"}, lora={"r": 4})
    assert isinstance(cfg, SFTConfig) and cfg.data.train == "sft.jsonl" and cfg.lora.r == 4


def test_make_config_validates_after_setting_loss():
    from alignkit.train import make_config

    with pytest.raises(ConfigError, match="method.label_smoothing"):
        make_config("robust", overrides=["data.train=pairs.jsonl"])


def test_make_config_unknown_method():
    from alignkit.train import make_config

    with pytest.raises(ConfigError) as e:
        make_config("nope", overrides=["data.train=pairs.jsonl"])
    assert "unknown method 'nope'" in str(e.value) and "dpo" in str(e.value) and "sft" in str(e.value)
