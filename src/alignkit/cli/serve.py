"""``alignkit serve``: the OpenAI-compatible server with feedback, comparisons, A/B rollout and monitoring."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Optional

import typer

from alignkit.errors import UserError

VARIANT_HELP = (
    "NAME=SOURCE, repeatable: SOURCE is a model directory, a LoRA adapter directory (merged at load), "
    "'smollm2-135m-instruct', or an OpenAI-compatible base URL (http://host:port/v1, optionally #MODEL)"
)


def parse_variants(model: str | None, variants: list[str]) -> list[tuple[str, str | None]]:
    """[(name, source)] from --model and --variant NAME=SOURCE; no model and no variant = the embedded default."""
    out: list[tuple[str, str | None]] = []
    for v in variants:
        name, sep, source = v.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise UserError(f"--variant {v!r}: expected NAME=SOURCE. Fix: e.g. --variant new=runs/kto/final")
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UserError(f"--variant {v!r}: the name may hold letters, digits, '-', '_' and '.' only")
        out.append((name.strip(), source.strip()))
    if model is not None or not out:
        out.insert(0, ("default", model))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"--variant: names repeat ({', '.join(names)}). Fix: give each variant its own name")
    return out


def parse_weights(text: str | None) -> dict[str, float] | None:
    """--weights base=0.95,new=0.05 -> {"base": 0.95, "new": 0.05}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, sep, w = part.partition("=")
        try:
            out[name.strip()] = float(w)
        except ValueError:
            raise UserError(f"--weights {text!r}: {part!r} is not NAME=NUMBER. Fix: e.g. base=0.95,new=0.05") from None
        if not sep:
            raise UserError(f"--weights {text!r}: {part!r} is not NAME=NUMBER. Fix: e.g. base=0.95,new=0.05")
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_keys(admin: list[str], chat: list[str], feedback: list[str]) -> dict[str, set[str]]:
    """Keys by scope from the options and ALIGNKIT_{ADMIN,CHAT,FEEDBACK}_KEYS (comma-separated)."""
    keys = {"admin": set(admin), "chat": set(chat), "feedback": set(feedback)}
    for scope in keys:
        keys[scope] |= set(os.environ.get(f"ALIGNKIT_{scope.upper()}_KEYS", "").split(","))
        keys[scope] = {k.strip() for k in keys[scope] if k.strip()}  # an empty key is no key
    return keys


def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The 'default' variant (embedded if none given)"),
    variant: list[str] = typer.Option([], "--variant", "-v", help=VARIANT_HELP),
    weights: Optional[str] = typer.Option(
        None, help="A/B weights, e.g. default=0.95,new=0.05 (default: as last recorded)"
    ),
    host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback requires API keys"),
    port: int = typer.Option(8000, min=0, max=65535),
    db: Optional[str] = typer.Option(None, help="Store: a SQLite path or a database URL (postgresql+psycopg://...)"),
    admin_key: list[str] = typer.Option([], help="API key with every scope (also ALIGNKIT_ADMIN_KEYS)"),
    chat_key: list[str] = typer.Option([], help="API key for chat only (also ALIGNKIT_CHAT_KEYS)"),
    feedback_key: list[str] = typer.Option([], help="API key for chat feedback only (also ALIGNKIT_FEEDBACK_KEYS)"),
    max_concurrency: int = typer.Option(
        64, min=1, help="Chat requests in flight at once (decoding or queued); more get 429 with Retry-After"
    ),
    max_batch_size: int = typer.Option(
        16, min=1, help="Rows each local variant decodes together (continuous batching); 1 = one request at a time"
    ),
    max_waiting: int = typer.Option(64, min=0, help="Requests queued per local variant; more get 429 + Retry-After"),
    prefill_chunk: int = typer.Option(256, min=16, help="Prompt tokens prefilled per decode step (long prompts)"),
    max_tokens: int = typer.Option(1024, min=1, help="Largest max_tokens a request may ask for"),
    max_body_kb: int = typer.Option(1024, min=1, help="Largest request body (KiB); more gets 413"),
    flagger: Optional[str] = typer.Option(None, help="Safety flagger: keywords (default) or reward_model:DIR"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps (local variants)"),
    dtype: str = typer.Option("auto", help="auto (bf16 autocast where native), fp32 or bf16"),
):
    """Serve chat (OpenAI-compatible), collect thumbs and side-by-side votes into a durable store, split traffic
    between variants by user hash, and export Prometheus metrics with failure detectors. Open http://HOST:PORT/ for
    the feedback page."""
    import uvicorn

    from alignkit.serve.app import Server, ServeSettings, create_app
    from alignkit.serve.engine import make_variant
    from alignkit.serve.store import DEFAULT_DB, Store

    keys = api_keys(admin_key, chat_key, feedback_key)
    if not is_loopback(host) and not keys["admin"]:
        raise UserError(
            f"--host {host} is reachable from other machines and no admin key is set. Fix: give --admin-key KEY "
            "(and --chat-key/--feedback-key for clients), or bind 127.0.0.1"
        )
    from alignkit.models.load import check_model_source

    for name, source in parse_variants(model, variant):  # every local path before the first model loads
        if source and "://" not in source:
            check_model_source(source, f"variant {name}:")
    batching = {"max_rows": max_batch_size, "max_waiting": max_waiting, "prefill_chunk": prefill_chunk}
    variants = {
        name: make_variant(name, source, device, dtype, **batching) for name, source in parse_variants(model, variant)
    }
    settings = ServeSettings(
        api_keys=keys, max_concurrency=max_concurrency, max_tokens_cap=max_tokens, max_body_bytes=max_body_kb * 1024,
        flagger=flagger, device=device, dtype=dtype, batching=batching,
    )  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(db or DEFAULT_DB)
    server = Server(variants, store, settings, parse_weights(weights))
    typer.echo(f"alignkit serve: {', '.join(variants)} on http://{host}:{port} (store {store.url}); weights "
               f"{server.router.weights}")  # fmt: skip
    try:
        uvicorn.run(create_app(server), host=host, port=port, log_level="warning", access_log=False)
    finally:
        store.close()


def retrain(
    db: Optional[str] = typer.Option(
        None, help="The store `alignkit serve` wrote to (default runs/serve/alignkit.sqlite)"
    ),
    out: str = typer.Option("runs/retrain", "--out", "-o", help="Directory for the data, the model and the report"),
    judge: str = typer.Option(
        ..., "--judge", "-j", help="Judge of new vs serving: reward_model:DIR, verifier:math, llm:M"
    ),
    base: Optional[str] = typer.Option(None, "--base", help="The serving model (dir/adapter; default: embedded)"),
    previous: Optional[str] = typer.Option(None, help="The data the serving model was trained on (same format)"),
    mix: float = typer.Option(0.5, help="Share of fresh feedback in the training set (spec: 0.5)"),
    method: str = typer.Option("kto", help="kto (thumbs) or dpo (pairs from thumbs and comparison votes)"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Training YAML to start from (configs/kto.yaml)"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Training overrides, e.g. train.max_steps=50"),
    eval_prompts: str = typer.Option("builtin:helpful_prompts.jsonl", help="Held-out prompts for the comparison"),
    limit: int = typer.Option(50, min=1, help="Held-out prompts judged"),
    max_new_tokens: int = typer.Option(128, min=1),
    min_win_rate: float = typer.Option(0.5, help="Deploy only above this win rate (ties half) over the serving model"),
    server: Optional[str] = typer.Option(None, help="Running server to add the winner to, e.g. http://127.0.0.1:8000"),
    admin_key: Optional[str] = typer.Option(None, envvar="ALIGNKIT_ADMIN_KEY", help="The server's admin key"),
    name: str = typer.Option("retrained", help="Variant name of the new model on the server"),
    weight: float = typer.Option(0.05, help="The new variant's first traffic share (spec: 5%)"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when retrain did not write it"),
):
    """Export fresh feedback, mix it with the previous data, train KTO (or DPO), judge the new model against the
    serving one on held-out prompts, and add it to the server as a new variant at a small weight only if it wins."""
    from alignkit.recipes.retrain import RetrainConfig
    from alignkit.recipes.retrain import retrain as run_retrain
    from alignkit.serve.store import DEFAULT_DB

    cfg = RetrainConfig(
        db=db or DEFAULT_DB, out=out, judge=judge, base=base, previous=previous, mix=mix, method=method, config=config,
        overrides=list(set_), eval_prompts=eval_prompts, limit=limit, max_new_tokens=max_new_tokens,
        min_win_rate=min_win_rate, server=server, admin_key=admin_key, name=name, weight=weight, seed=seed,
        device=device, overwrite=overwrite,
    )  # fmt: skip
    report = run_retrain(cfg, log=typer.echo)
    typer.echo(f"report: {Path(out) / 'retrain_report.json'}; deployed: {bool(report['deployed'])}")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(retrain)
