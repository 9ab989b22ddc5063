"""`tuneforge eval | forgetting | compare`: thin wrappers over run_eval, run_forgetting and compare_runs."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from tuneforge.common.errors import TuneforgeError
from tuneforge.eval.suites import DEFAULT_SHOTS

err = Console(stderr=True, highlight=False)


def _split_csv(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def _suites_from_cli(benchmarks: list[str] | None, subjects: list[str] | None, shots: int | None,
                     limit: int | None, split: str | None) -> list[dict] | None:
    if not benchmarks:
        return None
    # no --shots: the config's own default (SuiteConfig.shots), stated once
    return [{"benchmark": b, "subjects": subjects, **({} if shots is None else {"shots": shots}), "limit": limit,
             "split": split, "strict_subjects": len(benchmarks) == 1} for b in benchmarks]


def _progress(msg: str) -> None:
    err.print(f"[dim]{msg}[/dim]")


def eval_command(
    config: Path | None = typer.Argument(None, help="eval config YAML (configs/eval.yaml)", dir_okay=False),
    model: str | None = typer.Option(None, "--model", "-m", help="embedded:smollm2, a local folder or a hub id"),
    adapter: str | None = typer.Option(None, "--adapter", help="PEFT adapter folder"),
    benchmark: list[str] | None = typer.Option(None, "--benchmark", "-b",
                                               help="ceval[:DIR] | cmmlu[:DIR] | mmlu[:DIR] | mcq:FILE (repeatable)"),
    subjects: str | None = typer.Option(None, "--subjects", help="comma-separated subject keys"),
    shots: int | None = typer.Option(None, "--shots", help=f"k-shot from the dev split (default {DEFAULT_SHOTS}; 0 = zero-shot)"),
    limit: int | None = typer.Option(None, "--limit", help="first N questions per subject"),
    split: str | None = typer.Option(None, "--split", help="val (default) or test (writes the submission JSON)"),
    engine: str | None = typer.Option(None, "--engine", help="native (default) or lm-eval"),
    chat: bool = typer.Option(False, "--chat", help="wrap prompts in the model's chat template"),
    mode: str | None = typer.Option(None, "--mode", help="logits (default: next-token letter logits) or generate "
                                    "(the model writes its answer; the letter is extracted)"),
    cot: bool = typer.Option(False, "--cot", help="generate mode: chain-of-thought instruction"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="generate mode (32; 512 with --cot)"),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda"),
    dtype: str | None = typer.Option(None, "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
) -> None:
    """Run benchmarks (C-Eval/CMMLU/MMLU/own exam), held-out and perplexity evals; write results and reports."""
    from tuneforge.common.extras import require
    from tuneforge.eval.config import load_config

    require("evaluation", "eval")  # the check importing it did first; the import itself waits for a good config

    cfg = load_config(config, engine=engine, device=device, dtype=dtype, batch_size=batch_size, chat=chat or None,
                      mode=mode)
    if cot:
        cfg.generation.cot = True
    if max_new_tokens:
        cfg.generation.max_new_tokens = max_new_tokens
    subj = _split_csv(subjects)
    cli_suites = _suites_from_cli(benchmark, subj, shots, limit, split)
    if cli_suites is not None:
        cfg = load_config(cfg.model_dump() | {"suites": cli_suites})
    else:
        for s in cfg.suites:
            s.subjects = subj or s.subjects
            s.shots = s.shots if shots is None else shots
            s.limit = limit or s.limit
            s.split = split or s.split
    if mode:  # the command line decides for every suite
        for s in cfg.suites:
            s.mode = None
    from tuneforge.eval import run_eval  # torch, transformers: seconds

    res = run_eval(cfg, out=out, model=model, adapter=adapter, progress=_progress)
    for name, s in res.get("suites", {}).items():
        hard = f"  hard {s['hard']['accuracy']}" if s.get("hard") else ""
        unex = f"  unextracted {s['unextracted']}" if s.get("unextracted") is not None else ""
        rej = f"  rejected {s['rejected']} (see {out}/rejects.jsonl)" if s.get("rejected") else ""
        typer.echo(f"{name}: accuracy {s['accuracy']} on {s['n']} questions{hard}{unex}{rej}")
    if "heldout" in res:
        typer.echo("heldout: " + json.dumps(res["heldout"]["metrics"], ensure_ascii=False))
    if "perplexity" in res:
        typer.echo(f"perplexity: {res['perplexity']['perplexity']}")
    typer.echo(f"-> {out}/results.json, report.html, report.md")


def forgetting_command(
    base: str = typer.Option(..., "--base", help="the model before fine-tuning"),
    tuned: str | None = typer.Option(None, "--tuned", help="the fine-tuned model (default: --base + --adapter)"),
    adapter: str | None = typer.Option(None, "--adapter", help="PEFT adapter applied to the tuned model"),
    suites: str | None = typer.Option(None, "--suites", help="comma-separated suite specs, e.g. ceval,cmmlu"),
    config: Path | None = typer.Option(None, "--config", help="eval config YAML (suites, thresholds)"),
    subjects: str | None = typer.Option(None, "--subjects"),
    shots: int | None = typer.Option(None, "--shots"),
    limit: int | None = typer.Option(None, "--limit", help="first N questions per subject"),
    tolerance: float | None = typer.Option(None, "--tolerance", help="points of accuracy drop tolerated (1)"),
    alpha: float | None = typer.Option(None, "--alpha", help="significance level (0.05)"),
    device: str | None = typer.Option(None, "--device"),
    base_eval: Path | None = typer.Option(None, "--base-eval", file_okay=False,
                                          help="folder for the base model's evaluation, shared by checks of one "
                                               "base: reused when it ran this same config, else written there"),
    out: Path = typer.Option(..., "--out", "-o"),
    fail_on_forgetting: bool = typer.Option(False, help="exit 1 when the verdict is forgetting (a gate)"),
) -> None:
    """Base vs tuned on the same general questions: per suite and category delta, 95% CI, McNemar, verdict."""
    from tuneforge.common.extras import require
    from tuneforge.eval.config import load_config

    require("evaluation", "eval")  # the check importing it did first; the import itself waits for a good config

    cfg = load_config(config, device=device)
    if tolerance is not None:
        cfg.forgetting.tolerance = tolerance
    if alpha is not None:
        cfg.forgetting.alpha = alpha
    specs = _split_csv(suites)
    if specs:
        cfg = load_config(cfg.model_dump() | {"suites": _suites_from_cli(specs, _split_csv(subjects), shots, limit,
                                                                          None)})
    elif not cfg.suites:
        raise TuneforgeError("name the general suites: --suites ceval,cmmlu (or suites: in --config)")
    from tuneforge.eval import run_forgetting  # torch, transformers: seconds

    res = run_forgetting(base, tuned, out=out, adapter=adapter, config=cfg, progress=_progress, base_eval=base_eval)
    fg = res["forgetting"]
    for name, s in fg["suites"].items():
        typer.echo(f"{name} [{s.get('tier', 'critical')}]: {s['base_accuracy']:.2f} -> {s['tuned_accuracy']:.2f} "
                   f"({s['delta']:+.2f} pt, 95% CI [{s['ci_low']:.2f}, {s['ci_high']:.2f}], McNemar p={s['p_value']:.3g}, "
                   f"MDE {s.get('mde', float('nan')):.1f} pt): {s['verdict']}"
                   + (f" ({s['note']})" if s.get("note") else ""))
    if fg.get("perplexity"):
        p = fg["perplexity"]
        typer.echo(f"perplexity: {p['base']} -> {p['tuned']} ({p['change_pct']:+.2f}%)")
    if res.get("judge"):
        j = res["judge"]
        typer.echo(f"judge win rate (tuned vs base): {j['win_rate']}% [{j['ci_low']}, {j['ci_high']}] over {j['n']} "
                   f"pairs ({j['wins']} wins, {j['ties']} ties, {j['losses']} losses)")
    typer.echo(f"verdict: {fg['verdict']}  -> {out}/results.json, report.html")
    if fail_on_forgetting and fg["verdict"] == "forgetting":
        raise typer.Exit(1)


def compare_command(
    runs: list[Path] = typer.Argument(..., help="eval run folders (each with results.json) or pipeline folders "
                                                 "(`tuneforge run` outputs: their base and tuned models)"),
    out: Path = typer.Option(..., "--out", "-o"),
) -> None:
    """One leaderboard report across eval runs and pipelines."""
    from tuneforge.eval import compare_runs  # checks the [eval] extra (matplotlib) first

    res = compare_runs([str(r) for r in runs], out)
    for e in res["leaderboard"]:
        typer.echo(f"{e['rank']}. {e['run']}: {_summary_line(e)}")
    for e in res.get("not_comparable", []):
        typer.echo(f"not ranked (other questions): {e['run']}: {_summary_line(e)}")
    typer.echo(f"-> {out}/report.html")


def _summary_line(e: dict) -> str:
    """Every metric a compared run has: suites with chance (marked when below), held-out, perplexity."""
    from tuneforge.eval.report import with_chance

    parts = [f"mean {e['mean']}"] if e.get("mean") is not None else []
    parts += [f"{s} {with_chance(v, e['chance'].get(s)) if e['chance'].get(s) is not None else v} (n={e['n'][s]})"
              for s, v in e["suites"].items()]
    parts += [f"held-out {k} {v}" for k, v in (e.get("heldout") or {}).items() if k not in ("n", "tokenize",
                                                                                             "exact_match_n")]
    parts.append(f"perplexity {e['perplexity'] if e.get('perplexity') is not None else 'not measured'}")
    if e.get("forgetting"):
        parts.append(f"forgetting {e['forgetting_summary']}")
    return "  ".join(parts)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("forgetting")(forgetting_command)
    app.command("compare")(compare_command)
