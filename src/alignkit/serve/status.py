"""The rollout status page (``GET /rollout``): where each ``alignkit loop`` stands and its recent decisions with
the numbers behind them. Plain HTML, no script, every value escaped."""

from __future__ import annotations

import html
import json

from alignkit.serve.stats import format_time


def _cell(value) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def _share(event: dict) -> str:
    return f"{event['share']:.0%}" if event["share"] is not None else "-"


def rollout_html(events: list[dict], weights: dict[str, float]) -> str:
    """The page for ``events`` (oldest first) and the server's current A/B ``weights``."""
    latest: dict[str, dict] = {}
    for e in events:
        latest[e["loop"]] = e
    loops = "".join(
        f"<tr>{_cell(name)}{_cell(e['champion'])}{_cell(e['candidate'] or '-')}"
        f"{_cell(_share(e))}{_cell(e['action'])}"
        f"{_cell(format_time(e['created']))}</tr>"
        for name, e in latest.items()
    )
    rows = "".join(
        f"<tr>{_cell(e['id'])}{_cell(format_time(e['created']))}{_cell(e['loop'])}{_cell(e['action'])}"
        f"{_cell(e['candidate'] or '-')}{_cell(_share(e))}"
        f"{_cell(e['reason'])}<td><details><summary>numbers</summary><pre>"
        f"{html.escape(json.dumps(e['numbers'], indent=1, default=str))}</pre></details></td></tr>"
        for e in reversed(events)
    )
    shares = ", ".join(f"{html.escape(k)} {v:.0%}" for k, v in weights.items())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>alignkit rollout</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}pre{{margin:0}}</style></head>
<body><h1>alignkit rollout</h1><p>Traffic now: {shares or "-"}</p>
<h2>Loops</h2><table><tr><th>loop</th><th>champion</th><th>candidate</th><th>share</th><th>last action</th>
<th>at</th></tr>{loops or '<tr><td colspan="6">no loop has recorded anything yet</td></tr>'}</table>
<h2>Decisions, newest first</h2><table><tr><th>#</th><th>at</th><th>loop</th><th>action</th><th>candidate</th>
<th>share</th><th>why</th><th></th></tr>{rows}</table></body></html>"""
