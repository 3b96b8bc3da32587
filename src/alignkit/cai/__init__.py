"""Constitutional AI: a constitution of principles, critique-and-revision (supervised phase), AI preference labels
(RLAIF). ``alignkit cai revise`` and ``alignkit cai label`` run the two phases; see docs/cai.md."""

from alignkit.cai.constitution import Constitution, Principle, derive_seed, load_constitution

__all__ = [
    "Constitution",
    "LabelConfig",
    "Principle",
    "ReviseConfig",
    "derive_seed",
    "load_constitution",
    "run_label",
    "run_revise",
]


def __getattr__(name: str):
    """The two phases load on first use (they import the model stack)."""
    if name in ("ReviseConfig", "run_revise"):
        from alignkit.cai import revise

        return getattr(revise, name)
    if name in ("LabelConfig", "run_label"):
        from alignkit.cai import label

        return getattr(label, name)
    raise AttributeError(f"module 'alignkit.cai' has no attribute {name!r}")
