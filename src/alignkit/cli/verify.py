"""``alignkit verify``: score completions with the built-in verifiers (math answers, sandboxed code)."""

from __future__ import annotations

import typer

from alignkit.cli.helpers import OVERWRITE_HELP, read_input

verify_app = typer.Typer(
    no_args_is_help=True, help="Score completions with a verifier: math answers, code against tests."
)


@verify_app.command("math")
def verify_math(
    input_: str = typer.Option(..., "--input", "-i", help="Records (.jsonl/.json/.parquet/.csv) with a completion"),
    out: str = typer.Option(..., "--out", "-o", help="Where to write the records plus reward, extracted, gold"),
    completion_field: str = typer.Option("completion", help="The field holding the completion text"),
    answer_field: str = typer.Option("answer", help="The field holding the gold answer: '#### N', a number, LaTeX"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Check math answers: reward 1.0 where the completion's final answer equals the gold answer, else 0.0
    (null where the record has no gold answer)."""
    from pathlib import Path

    from alignkit.data.jsonl import write_jsonl
    from alignkit.errors import DataError
    from alignkit.rewards.verifiers.math import grade

    rows, problems = [], []
    for source, record in read_input(input_, Path(out), overwrite=overwrite):
        completion = record.get(completion_field) if isinstance(record, dict) else None
        if not isinstance(completion, (str, list)):
            found = "is missing" if completion is None else f"is not text (got {type(completion).__name__})"
            problems.append(f"{source}: field '{completion_field}' {found}")
            continue
        g = grade(completion, record.get(answer_field))
        rows.append({**record, "reward": g.reward, "extracted": g.extracted, "gold": g.gold})
    if problems:
        listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(
            f"{len(problems)} record(s) without a completion:\n  {listed}\n"
            f"Fix: give each record its completion text in '{completion_field}' (or name the field: --completion-field)"
        )
    correct = sum(r["reward"] == 1.0 for r in rows)
    no_answer = sum(r["reward"] is None for r in rows)
    graded = len(rows) - no_answer
    accuracy = f"{correct / graded:.4f}" if graded else "n/a"
    typer.echo(f"records {len(rows)}, correct {correct}, accuracy {accuracy}, no gold answer {no_answer}")
    typer.echo(f"wrote {write_jsonl(out, rows)}")


@verify_app.command("code")
def verify_code_cmd(
    input_: str = typer.Option(..., "--input", "-i", help="Records: completion, tests, optional entry_point, prompt"),
    out: str = typer.Option(..., "--out", "-o", help="Where to write the records plus reward, passed, status"),
    timeout: float = typer.Option(5.0, min=0.1, help="Seconds each program may run (wall clock; CPU limit too)"),
    memory_mb: int = typer.Option(512, min=64, help="Address-space limit of each program, in MB"),
    unsafe_no_sandbox: bool = typer.Option(
        False, "--unsafe-no-sandbox", help="Run WITHOUT isolation (rlimits only) when no sandbox can be made"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
):
    """Run each completion's program against its unit tests in a sandbox: reward 1.0 on pass, else 0.0
    (status pass, fail, timeout, error; infra_error with a null reward where the sandbox could not run it)."""
    from collections import Counter
    from pathlib import Path

    from alignkit.data.jsonl import write_jsonl
    from alignkit.errors import DataError
    from alignkit.rewards.sandbox import SandboxUnavailable, sandbox_backend
    from alignkit.rewards.verifiers.code import STATUSES, verify_many

    records, problems = [], []
    for source, record in read_input(input_, Path(out), overwrite=overwrite):
        if not isinstance(record, dict):
            problems.append(f"{source}: not a JSON object")
            continue
        for field, required in (("completion", True), ("tests", True), ("entry_point", False)):
            value = record.get(field)
            if not isinstance(value, str) and (required or value is not None):
                found = "is missing" if value is None else f"is a {type(value).__name__}, not text"
                problems.append(f"{source}: field '{field}' {found}")
        records.append(record)
    if problems:
        listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(
            f"{len(problems)} problem(s) in {input_}:\n  {listed}\n"
            "Fix: give each record 'completion' (text) and 'tests' (Python asserts, or HumanEval's check(candidate)),"
            " and optionally 'entry_point' (the function's name) and 'prompt'"
        )
    try:
        backend = sandbox_backend()
    except SandboxUnavailable:
        if not unsafe_no_sandbox:
            raise
        backend = "none (UNSAFE: no isolation)"
    results = verify_many(records, timeout=timeout, memory_mb=memory_mb, allow_unsafe=unsafe_no_sandbox)
    rows = [{**rec, "reward": r.reward, "passed": r.passed, "status": r.status} for rec, r in zip(records, results)]
    counts = Counter(r.status for r in results)
    typer.echo(f"records {len(rows)} (sandbox {backend}): " + ", ".join(f"{s} {counts[s]}" for s in STATUSES))
    typer.echo(f"wrote {write_jsonl(out, rows)}")


def register(app: typer.Typer) -> None:
    app.add_typer(verify_app, name="verify")
