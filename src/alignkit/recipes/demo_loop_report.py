"""The loop demo's measurements and report: held-out accuracy of the serving model against the original, thumbs-up
rate per variant over time (95% Wilson intervals), the traffic share of each candidate, and every decision."""

from __future__ import annotations

import json
import time
from pathlib import Path

HELDOUT = "builtin:arithmetic_heldout.jsonl"
WINDOW_S = 60.0


def heldout_change(serving: str | None, limit: int = 300, category: str | None = "mul") -> dict:
    """Greedy held-out accuracy of the original embedded model and of ``serving`` (None: it is the original), with
    the paired change (McNemar's exact test), overall and on ``category`` (what the users asked)."""
    import torch

    from alignkit.eval.accuracy import evaluate_math
    from alignkit.models import load_model, load_tokenizer
    from alignkit.recipes.demo_grpo import paired_change

    def accuracy(source):
        model = load_model(source, torch.float32, torch.device("cpu"))
        return evaluate_math(model, load_tokenizer(source), HELDOUT, max_new_tokens=64, limit=limit)

    original = accuracy(None)
    out = {"n": original.n, "original": original.summary(), "serving_source": serving}
    if serving is not None:
        after = accuracy(serving)
        out |= {"serving": after.summary(), "change": paired_change(original, after)}
        if category is not None:
            from dataclasses import replace

            def only(result):
                return replace(result, records=[r for r in result.records if r.get("category") == category])

            out["change_" + category] = paired_change(only(original), only(after))
    return out


def _figures(responses: list[dict], feedback: list[dict], events: list[dict], t0: float) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignkit.eval.report.blocks import Image
    from alignkit.eval.report.figures import _png
    from alignkit.serve.stats import buckets, latest_feedback

    kept, _ = latest_feedback(feedback)
    windows = buckets(responses, kept, WINDOW_S, since=t0)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    variants = sorted({v for w in windows for v in w["variants"]})
    for k, variant in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for w in windows:
            s = w["variants"].get(variant)
            if s and s["rated"]:
                xs.append((w["start"] + w["end"]) / 2 - t0 + 2 * k)  # a small shift: intervals do not overlap
                ys.append(s["up_rate"])
                lo.append(s["up_rate"] - s["interval"][0])
                hi.append(s["interval"][1] - s["up_rate"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, label=variant)
    for e in events:
        if e["action"] in ("deployed", "advanced", "promoted", "rolled_back", "withdrawn"):
            ax.axvline(e["created"] - t0, color="grey", lw=0.8, ls=":")
            ax.text(e["created"] - t0, 1.02, e["action"], rotation=90, fontsize=7, va="bottom", ha="center")
    ax.set(xlabel="seconds since the demo started", ylabel="thumbs-up rate", ylim=(0, 1))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    rates = Image("thumbs_up_rate.png", f"Thumbs-up rate per variant per {WINDOW_S:.0f}s (95% Wilson)", _png(fig))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 2.6))
    t_end = max([r["created"] for r in responses] + [time.time()]) - t0
    share: dict[str, list] = {}
    for e in events:
        if e["candidate"] and e["action"] in ("deployed", "advanced", "promoted", "rolled_back", "withdrawn"):
            share.setdefault(e["candidate"], []).append((e["created"] - t0, e["share"]))
    for cand, points in share.items():
        xs = [p[0] for p in points] + [t_end]
        ys = [p[1] for p in points] + [points[-1][1]]
        ax.step(xs, ys, where="post", label=cand)
    ax.set(xlabel="seconds since the demo started", ylabel="candidate's traffic share", ylim=(-0.05, 1.05))
    ax.legend(fontsize=8)
    fig.tight_layout()
    shares = Image("traffic_share.png", "Each candidate's traffic share by stage", _png(fig))
    plt.close(fig)
    return [rates, shares]


def write_loop_report(out: Path, events, responses, feedback, users, accuracy: dict, state, seconds: float) -> dict:
    """report.md / report.html / summary.json of the loop demo; returns the summary."""
    from alignkit.eval.report.blocks import Heading, Table, Text, write_report
    from alignkit.serve.stats import latest_feedback, variant_stats

    t0 = min([r["created"] for r in responses], default=time.time())
    kept, _ = latest_feedback(feedback)
    per_variant = variant_stats(responses, kept)
    outcome = [e for e in events if e["action"] in ("promoted", "rolled_back", "gate_failed", "withdrawn")]
    promoted = [e for e in events if e["action"] == "promoted"]
    rose = None
    if promoted:
        d = (promoted[-1]["numbers"] or {}).get("decision") or {}
        rose = {"candidate": promoted[-1]["candidate"], "diff": d.get("diff"), "interval": d.get("diff_interval")}
    orig = accuracy["original"]
    summary = {
        "seconds": round(seconds, 1), "responses": len(responses), "ratings": len(kept),
        "errors": dict(users.traffic.errors), "outcomes": [(e["candidate"], e["action"]) for e in outcome],
        "champion": state.champion, "served_quality_rose": rose, "heldout": accuracy,
        "variants": {v: {k: s[k] for k in ("rated", "up", "up_rate", "interval")} for v, s in per_variant.items()},
    }  # fmt: skip
    if rose:
        verdict = (f"Served quality rose: {rose['candidate']} was promoted with a thumbs-up lead of "
                   f"{rose['diff']:+.3f} (95% Newcombe interval [{rose['interval'][0]:+.3f}, "
                   f"{rose['interval'][1]:+.3f}]) on its stage's traffic.")  # fmt: skip
    else:
        verdict = "Served quality did not rise in this run: no candidate was promoted (see the decisions)."
    acc = (f"Held-out accuracy (greedy, {accuracy['n']} problems no user asked): original {orig['accuracy']:.3f} "
           f"(multiplication {orig.get('accuracy/mul', float('nan')):.3f})")  # fmt: skip
    if "serving" in accuracy:
        ch = accuracy["change"]
        now = accuracy["serving"]["accuracy"]
        mul = accuracy["serving"].get("accuracy/mul", float("nan"))
        acc += (f", serving model ({state.champion}) {now:.3f} (multiplication {mul:.3f}): "
                f"{100 * ch['change']:+.1f} points, {ch['fixed']} fixed / {ch['broken']} broken, McNemar exact p = "
                f"{ch['p_value']:.3g}.")  # fmt: skip
        cm = accuracy.get("change_mul")
        if cm:
            acc += (f" On the 60 multiplication problems: {cm['fixed']} fixed / {cm['broken']} broken, McNemar exact "
                    f"p = {cm['p_value']:.3g}.")  # fmt: skip
    else:
        acc += f"; the original still serves ({state.champion})."
    blocks = [
        Heading("What happened"),
        Text(verdict),
        Text(acc),
        Text(
            "Who judged: the simulated users ask multiplication word problems and rate with the math verifier against "
            "each problem's gold answer (plus 5% slips and 5% of users who approve everything); the offline gate "
            "(held-out multiplication problems) and the held-out accuracy (all 300 held-out problems, and their "
            "multiplication part) use the same verifier on problems no user asked. No judge learned from the feedback "
            "it judges. One run, one seed: the intervals are within-run, not a seed spread.",
            "note",
        ),  # fmt: skip
        Heading("Thumbs-up rate and traffic"),
        *_figures(responses, feedback, events, t0),
        Table(
            ["variant", "rated", "thumbs-up", "95% Wilson"],
            [
                [
                    v,
                    str(s["rated"]),
                    f"{s['up_rate']:.3f}" if s["up_rate"] is not None else "-",
                    f"[{s['interval'][0]:.3f}, {s['interval'][1]:.3f}]" if s["interval"] else "-",
                ]
                for v, s in per_variant.items()
            ],
        ),  # fmt: skip
        Heading("Every decision of the loop (from the store)"),
        Table(
            ["at (s)", "action", "candidate", "share", "why"],
            [
                [
                    f"{e['created'] - t0:.0f}",
                    e["action"],
                    e["candidate"] or "-",
                    f"{e['share']:.0%}" if e["share"] is not None else "-",
                    e["reason"],
                ]
                for e in events
            ],
            text_columns=(4,),
        ),  # fmt: skip
        Text(
            f"{len(responses)} answers, {len(kept)} ratings, {seconds:.0f} s in all; request errors "
            f"{dict(users.traffic.errors) or 'none'}. Store: {out / 'store.sqlite'}; server log: "
            f"{out / 'server.log'}; each generation's data, model and gate report: {out / 'loop'}.",
            "note",
        ),  # fmt: skip
    ]
    write_report(out, blocks, "alignkit demo: the continual-alignment loop on the embedded SmolLM2-135M-Instruct")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary
