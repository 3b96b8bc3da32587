"""The run report: Markdown with measured numbers and PNG plots drawn from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from alignkit.data.jsonl import read_jsonl  # noqa: E402

PLOTS = {  # file -> (title, [(metric, label)])
    "loss.png": ("Loss", [("loss", "train"), ("eval/loss", "eval")]),
    "margins.png": (
        "Reward margin (chosen - rejected)",
        [("rewards/margins", "train"), ("eval/rewards/margins", "eval")],
    ),
    "accuracy.png": (
        "Implicit reward accuracy",
        [("rewards/accuracies", "train"), ("eval/rewards/accuracies", "eval")],
    ),
    "kl.png": (
        "log pi/pi_ref on chosen completions (KL estimate)",
        [("kl/chosen", "train"), ("eval/kl/chosen", "eval")],
    ),
}


RL_PLOTS = {  # online methods (GRPO, RLOO, PPO)
    "reward.png": ("Reward and pass rate of the sampled completions", [("reward/mean", "reward (mean)"),
                   ("pass@1/math", "pass@1"), ("pass@8/math", "pass@8"), ("eval/pass@1/math", "held-out pass@1")]),
    "length.png": ("Completion length (tokens)", [("completion/length", "mean")]),
    "entropy.png": ("Policy entropy per token (nats)", [("entropy", "train")]),
    "kl.png": ("KL to the reference per sequence", [("kl/sequence", "k1 sum"), ("kl/coef", "beta")]),
    "phases.png": ("Seconds per step by phase", [("time/generate", "generate"), ("time/reward", "reward"),
                   ("time/reference", "reference"), ("time/train", "train")]),
}  # fmt: skip


def plot_metrics(metrics_path: Path, out_dir: Path, plots: dict | None = None) -> list[str]:
    """One PNG per entry of ``plots`` (default ``PLOTS``) that has data; returns the file names written."""
    rows = read_jsonl(metrics_path)
    written = []
    for name, (title, series) in (plots or PLOTS).items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for key, label in series:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, ms=3, label=label)
                drawn = True
        if drawn:
            ax.set_title(title), ax.set_xlabel("step"), ax.grid(alpha=0.3), ax.legend()
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=110)
            written.append(name)
        plt.close(fig)
    return written


def write_report(
    out_dir: Path,
    title: str,
    summary: dict,
    pairwise: dict | None,
    generations: list[dict],
    plots: list[str],
    notes: list[str] = (),
    sections: list[str] = (),
) -> Path:
    """``report.md`` in ``out_dir``. ``generations``: dicts with prompt, before, after; ``sections``: more Markdown
    lines after the run table (e.g. an accuracy table)."""
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["## Run", "", "| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in summary.items()] + [""]
    lines += list(sections)
    if pairwise:
        lines += [
            "## Held-out pairwise accuracy",
            "",
            f"{pairwise['pairs']} held-out pairs. *Mean log-prob accuracy*: share of pairs where the model gives "
            "the chosen completion a higher mean per-token log-prob than the rejected one. *Implicit reward "
            "accuracy*: share where beta*log(pi/pi_ref) is higher for chosen (pi_ref = the model before training).",
            "",
            "| metric | before | after |",
            "|---|---|---|",
            f"| mean log-prob accuracy | {pairwise['mean_logp_accuracy_before']:.3f} | "
            f"{pairwise['mean_logp_accuracy_after']:.3f} |",
            f"| implicit reward accuracy | - | {pairwise['implicit_reward_accuracy_after']:.3f} |",
            f"| mean log-prob, chosen | {pairwise['mean_logp_chosen_before']:.3f} | "
            f"{pairwise['mean_logp_chosen_after']:.3f} |",
            f"| mean log-prob, rejected | {pairwise['mean_logp_rejected_before']:.3f} | "
            f"{pairwise['mean_logp_rejected_after']:.3f} |",
            "",
        ]
    if plots:
        lines += ["## Training curves", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if generations:
        lines += ["## Generations before and after (greedy)", ""]
        for g in generations:
            lines += [
                f"**Prompt:** {g['prompt']}",
                "",
                f"- *before:* {_quote(g['before'])}",
                f"- *after:* {_quote(g['after'])}",
                "",
            ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _quote(text: str) -> str:
    return " ".join(text.split()) or "(empty)"
