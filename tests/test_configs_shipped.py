"""Every YAML in configs/ loads and validates for the methods it documents."""

from pathlib import Path

import pytest

from alignkit.train import make_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHOD_OF = {"sft": "sft", "ipo": "ipo", "simpo": "simpo", "orpo": "orpo", "kto": "kto"}


def method_of(path: Path) -> str:
    if path.stem.startswith("retrain_kto"):
        return "kto"
    for prefix in ("online_dpo", "online_kto"):
        if path.stem.startswith(prefix):
            return prefix.replace("_", "-")
    for prefix in ("rm", "grpo", "rloo", "ppo", "distill"):
        if path.stem.startswith(prefix):
            return prefix
    return METHOD_OF.get(path.stem, "dpo")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_validates(path):
    if path.stem.startswith(("overopt", "compare")):
        return check_study(path)
    if path.stem.startswith("cai"):
        return  # not a training config: tests/test_cai.py::test_shipped_cai_configs_load
    if path.stem == "loop":
        return check_loop(path)
    method = method_of(path)
    cfg = make_config(method, str(path))
    assert cfg.train.output_dir.startswith("runs/")
    if method in ("grpo", "rloo"):
        assert cfg.method.resolved_advantage == method
    elif method not in ("sft", "kto", "rm", "ppo", "online-dpo", "online-kto", "distill"):
        assert cfg.method.loss == method


def test_the_grpo_demo_runs_the_shipped_recipe():
    """The demo's packaged config is configs/grpo_arithmetic.yaml apart from where it writes."""
    from alignkit.data.readers import builtin_path

    demo = make_config("grpo", str(builtin_path("demo_grpo.yaml")))
    recipe = make_config("grpo", str(CONFIGS / "grpo_arithmetic.yaml"))
    demo.train.output_dir, demo.train.overwrite = recipe.train.output_dir, recipe.train.overwrite
    assert demo == recipe


def test_the_tools_demo_runs_the_shipped_recipe():
    """The tool demo's packaged config is configs/grpo_tools.yaml apart from where it writes."""
    from alignkit.data.readers import builtin_path

    demo = make_config("grpo", str(builtin_path("demo_tools.yaml")))
    recipe = make_config("grpo", str(CONFIGS / "grpo_tools.yaml"))
    demo.train.output_dir, demo.train.overwrite = recipe.train.output_dir, recipe.train.overwrite
    assert demo == recipe


def check_study(path: Path) -> None:
    """An overoptimization or comparison recipe: it loads, and each of its training sections is a valid config."""
    if path.stem.startswith("overopt"):
        from alignkit.recipes.overopt import load_overopt_config

        cfg = load_overopt_config(str(path))
        sections = {"rm": cfg.rm}
    else:
        from alignkit.recipes.compare import load_compare_config

        cfg = load_compare_config(str(path))
        sections = {"sft": cfg.sft, "dpo": cfg.dpo, "kto": cfg.kto, "rm": cfg.rm, "ppo": cfg.ppo, "rm ": cfg.judge}
    assert cfg.output_dir.startswith("runs/")
    for method, section in sections.items():
        extra = {"method": {"reward_model": "runs/x"}} if method == "ppo" else {}
        merged = {**section, "data": {"train": "x.jsonl", **section.get("data", {})}}
        for key, value in extra.items():
            merged[key] = {**merged.get(key, {}), **value}
        make_config(method.strip(), **merged)


def check_loop(path: Path) -> None:
    """The loop's config loads and validates, and its training config validates for its method."""
    from alignkit.recipes.loop import load_loop_config

    cfg = load_loop_config(str(path))
    assert cfg.servers and cfg.stages == sorted(cfg.stages) and cfg.judge
    make_config(cfg.method, str(CONFIGS.parent / cfg.train_config), list(cfg.train_overrides))
    from alignkit.data.readers import builtin_path

    make_config("kto", str(builtin_path("demo_loop_kto.yaml")))  # the loop demo's training step
