"""SFT throughput on a GPU: padded batches (TRL's default) against packing and padding-free batches, on the
real length distribution of the hotel dataset, for a ~0.5B Qwen2.5-shaped model initialised at random.

Three steps, because the GPU machine has neither tuneforge's dependencies nor the shipped data:

    .venv/bin/python benchmarks/train.py prepare            # here: `tuneforge build` hotel -> token ids + masks
    python3 benchmarks/train.py run --json OUT.json          # on the GPU (needs torch, transformers, trl, datasets)
    .venv/bin/python benchmarks/train.py report OUT.json     # here: the table into benchmarks/RESULTS.md

Every variant is the same TRL SFTTrainer call tuneforge's `sft` stage makes (pre-tokenized input_ids + our
template's labels), differing only in `packing` / `padding_free`; tokens/s counts real (non-padding) tokens
and MFU counts the useful FLOPs of those tokens (6 x matmul params + causal attention) against the GPU's
dense bf16 peak. `run --tiny` runs the same code on CPU with a toy model, as a check of the script.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO / ".train_bench" / "hotel_tokens.json"
MAX_LEN = 2048
# dense bf16 peak (no sparsity), per the datasheets
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def prepare(out: Path, recipe: Path) -> None:
    """Build the shipped hotel recipe, tokenize every split with its chat template and the SmolLM2 tokenizer."""
    sys.path.insert(0, str(REPO))
    from datasets import load_from_disk
    from tuneforge.common.models import load_tokenizer
    from tuneforge.templates import get_template

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "tuneforge.cli", "build", str(recipe), "--out", tmp], check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL)
        manifest = json.loads((Path(tmp) / "manifest.json").read_text("utf-8"))
        dd = load_from_disk(str(Path(tmp) / manifest["datasets"]["messages"]))
        tok = load_tokenizer("embedded:smollm2")
        tpl = get_template(manifest["template"])
        rows = []
        for split in dd:
            for r in dd[split]:
                enc = tpl.tokenize(tok, r["messages"], train_on="all", max_length=MAX_LEN)
                rows.append({"input_ids": enc["input_ids"], "labels": enc["labels"]})
    used = {t for r in rows for t in r["input_ids"]}
    pad = next(i for i in range(len(tok)) if i not in used)  # a pad id absent from the data: exact token counts
    lengths = sorted(len(r["input_ids"]) for r in rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": str(recipe.relative_to(REPO)), "template": manifest["template"],
                               "tokenizer": "SmolLM2-135M-Instruct", "max_length": MAX_LEN, "pad_id": pad,
                               "rows": rows}), encoding="utf-8")
    print(f"{len(rows)} dialogues, tokens min/median/max {lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}, "
          f"mean {sum(lengths) / len(lengths):.0f} -> {out}")


def model_config(tiny: bool):
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=49152, max_position_embeddings=4096,
                           tie_word_embeddings=True)
    # Qwen2.5-0.5B's shape (494M parameters)
    return Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                       tie_word_embeddings=True, rope_theta=1_000_000.0)


def flops_per_token(cfg, lengths: list[int]) -> float:
    """Useful training FLOPs per real token: 6 x matmul params, plus causal attention at each token's context."""
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    matmul = layers * (2 * d * d + 2 * d * kv + 3 * d * f) + d * cfg.vocab_size  # attn + MLP + lm_head
    attn = sum(6 * layers * d * n * (n + 1) for n in lengths) / sum(lengths)  # sum over i of 12*L*d*i
    return 6 * matmul + attn


def kernel_check(lengths: list[int]) -> dict:
    """tuneforge's `varlen` flash path in bf16 against its exact masked path in float64, forward and backward."""
    import torch

    sys.path.insert(0, str(REPO))
    from tuneforge.trainers.attention import flash_available, flash_varlen, masked_varlen, segments

    g = torch.Generator(device="cuda").manual_seed(1)
    heads, kv_heads, dim = 14, 2, 64
    lens = lengths[:8]
    n = sum(lens)
    pos = torch.cat([torch.arange(m) for m in lens])[None].cuda()
    seg = segments(None, pos, 1, n, pos.device)
    base = [torch.randn(n, h, dim, device="cuda", generator=g) for h in (heads, kv_heads, kv_heads)]
    grad = torch.randn(n, heads, dim, device="cuda", generator=g)

    def grads(fn, dtype):
        x = [t.to(dtype).requires_grad_() for t in base]
        out = fn(*x, seg, dim ** -0.5, None) if fn is flash_varlen else fn(*x, seg, dim ** -0.5, 0.0, None)
        out.backward(grad.to(dtype))
        return [out.double(), *(t.grad.double() for t in x)]

    fast, ref = grads(flash_varlen, torch.bfloat16), grads(masked_varlen, torch.float64)
    names = ("out", "dq", "dk", "dv")
    errs = {k: float((a - b).norm() / b.norm()) for k, a, b in zip(names, fast, ref, strict=True)}
    return {"flash_kernel": flash_available(base[0].to(torch.bfloat16)), "sequences": len(lens), "tokens": n,
            "segments_found": len(seg.cu_seqlens) - 1, "rel_err_vs_fp64": errs}


def matmul_ceiling() -> float:
    """Measured bf16 matmul rate (TFLOP/s) of an 8192^3 product on random data, median of 20."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * 8192**3 / sorted(times)[len(times) // 2] / 1e12


def run(data_path: Path, json_out: Path | None, tiny: bool, steps: int, warmup: int,
        only: list[str] | None = None) -> dict:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from datasets import Dataset

    sys.path.insert(0, str(REPO))
    from tuneforge.trainers.attention import register

    register()
    blob = json.loads(data_path.read_text("utf-8"))
    rows = blob["rows"]
    cuda = torch.cuda.is_available()
    if not cuda and not tiny:
        raise SystemExit("no CUDA GPU: run with --tiny for the CPU check of this script")
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    cfg = model_config(tiny)
    lengths = [len(r["input_ids"]) for r in rows]
    fpt = flops_per_token(cfg, lengths)
    check = kernel_check(lengths) if cuda else None
    if check:
        print("varlen kernel check:", json.dumps(check), flush=True)
    ceiling = matmul_ceiling() if cuda else None
    reps = max(1, -(-(steps + warmup) * 32 * MAX_LEN // sum(lengths)) + 1)  # enough rows for every variant
    ds = Dataset.from_list(rows * reps).shuffle(seed=0)

    # A tokenizer only for TRL's bookkeeping (pad id); the ids are already in the data.
    tok_dir = data_path.parent / "tokenizer"
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.pad_token = tok.convert_ids_to_tokens(blob["pad_id"])

    liger = cuda and importlib.util.find_spec("liger_kernel") is not None
    fast = {"gradient_checkpointing": False, "loss_type": "nll"}  # TRL 1.12 defaults: True, "chunked_nll"
    lig = {"gradient_checkpointing": False, "use_liger_kernel": True} if liger else fast
    lname = "no act. ckpt, Liger" if liger else "no act. ckpt, nll"
    # (id, batches, attention, SFTConfig overrides, settings, batch size)
    variants = [("padded-default", "padded", "sdpa", {"packing": False}, "TRL defaults", 8)]
    for bs in (8, 16):  # the same kernels at two batch sizes: the ratio packed/padded is taken at equal batch
        variants += [(f"padded-fast-b{bs}", "padded", "sdpa", {"packing": False, **lig}, lname, bs),
                     (f"padded-varlen-b{bs}", "padded", "varlen", {"packing": False, **lig}, lname, bs),
                     (f"padfree-varlen-b{bs}", "padding-free", "varlen",
                      {"padding_free": True, "max_length": None, **lig}, lname, bs),
                     (f"packed-varlen-b{bs}", "packed (bfd)", "varlen", {"packing": True, **lig}, lname, bs)]
    variants += [("packed-sdpa-b8", "packed (bfd)", "sdpa", {"packing": True, **lig}, lname, 8),
                 ("packed-varlen-nll-b8", "packed (bfd)", "varlen", {"packing": True, **fast}, "no act. ckpt, nll", 8),
                 ("packed-varlen-b32", "packed (bfd)", "varlen", {"packing": True, **lig}, lname, 32)]
    if importlib.util.find_spec("flash_attn") is not None:
        variants.append(("packed-fa2", "packed (bfd)", "flash_attention_2", {"packing": True, **lig}, lname, 8))
    if only:
        variants = [v for v in variants if v[0] in only]

    class Clock(TrainerCallback):
        def __init__(self):
            self.t0 = self.tok0 = self.t1 = self.tok1 = None
            self.losses = []

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            if state.global_step == warmup:
                self.t0, self.tok0 = time.perf_counter(), state.num_input_tokens_seen
            self.t1, self.tok1 = time.perf_counter(), state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    results = []
    n_params = None
    for vid, name, attn, mode, settings, bs in variants:
        torch.manual_seed(0)
        dtype = torch.bfloat16 if cuda else torch.float32
        try:
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)
            n_params = sum(p.numel() for p in model.parameters())
            if cuda:
                model.cuda()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            clock = Clock()
            with tempfile.TemporaryDirectory() as tmp:
                args = SFTConfig(output_dir=tmp, max_steps=steps + warmup, per_device_train_batch_size=bs,
                                 learning_rate=2e-5, lr_scheduler_type="cosine",
                                 bf16=cuda, logging_steps=5, save_strategy="no", report_to="none",
                                 include_num_input_tokens_seen="non_padding", dataloader_num_workers=2,
                                 disable_tqdm=True, use_cpu=not cuda, **{"max_length": MAX_LEN, **mode})
                trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                     callbacks=[clock])
                trainer.train()
            if clock.t0 is None or clock.t1 <= clock.t0:
                raise RuntimeError(f"{vid}: fewer than warmup+1 steps ran")
        except Exception as e:  # one variant's failure must not lose the others' figures
            import traceback

            traceback.print_exc()
            results.append({"id": vid, "variant": name, "attn": attn, "settings": settings, "batch": bs,
                            "error": f"{type(e).__name__}: {e}"[:300]})
            print(json.dumps(results[-1]), flush=True)
            continue
        finally:
            trainer = model = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        tps = (clock.tok1 - clock.tok0) / (clock.t1 - clock.t0)
        step_s = (clock.t1 - clock.t0) / steps
        row = {"id": vid, "variant": name, "attn": attn, "settings": settings, "batch": bs, "tokens_per_s": tps,
               "step_s": step_s, "tokens_per_step": (clock.tok1 - clock.tok0) / steps,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
               "mfu": (tps * fpt / (peak * 1e12)) if peak else None,
               "first_loss": clock.losses[0] if clock.losses else None,
               "last_loss": clock.losses[-1] if clock.losses else None}
        results.append(row)
        print(json.dumps(row), flush=True)
    out = {"gpu": gpu, "model": "Qwen2.5-0.5B shape, random init" if not tiny else "tiny",
           "params": n_params, "flops_per_token": fpt, "peak_tflops": peak, "matmul_tflops": ceiling,
           "steps": steps, "warmup": warmup, "kernel_check": check,
           "data": {"source": blob["source"], "dialogues": len(rows), "mean_len": sum(lengths) / len(lengths),
                    "max_len": max(lengths)},
           "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "datasets")},
           "results": results}
    if liger:
        from importlib.metadata import version

        out["versions"]["liger_kernel"] = version("liger_kernel")
    add_ratios(out)
    print(table(out))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


def padding_efficiency(batch: int, data: Path = DATA) -> float | None:
    """Real tokens / padded tokens of random batches of the prepared dialogues (None if not prepared here)."""
    import random

    if not data.is_file():
        return None
    lengths = [len(r["input_ids"]) for r in json.loads(data.read_text("utf-8"))["rows"]]
    rng = random.Random(0)
    draws = [rng.sample(lengths, batch) for _ in range(2000)]
    return sum(sum(b) / (batch * max(b)) for b in draws) / len(draws)


def add_ratios(out: dict) -> None:
    """vs_default: against padded batches with TRL's defaults; vs_same: against the fastest padded run at the
    same batch size (rows per step) with the same settings, the ratio packing alone earns."""
    ok = [r for r in out["results"] if "error" not in r]
    base = next((r["tokens_per_s"] for r in ok if r["id"] == "padded-default"), None)
    for r in ok:
        r["vs_default"] = r["tokens_per_s"] / base if base else None
        same = [p["tokens_per_s"] for p in ok if p["variant"] == "padded" and p["batch"] == r["batch"]
                and p["settings"] == r["settings"]]
        r["vs_same"] = r["tokens_per_s"] / max(same) if same and r["variant"] != "padded" else None


def table(out: dict) -> str:
    lines = ["| batches | attention | settings | rows/step | tokens/s | vs padded (TRL defaults) | "
             "vs best padded, same rows + settings | tokens/step | step (s) | peak GPU mem (GiB) | MFU |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["results"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['attn']} | {r['settings']} | {r['batch']} | failed: "
                         f"{r['error'][:80]} | | | | | | |")
            continue
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        same = f"{r['vs_same']:.2f}x" if r["vs_same"] else "-"
        lines.append(f"| {r['variant']} | {r['attn']} | {r['settings']} | {r['batch']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['vs_default']:.2f}x | {same} | {r['tokens_per_step']:,.0f} | {r['step_s']:.3f} | {mem} | "
                     f"{mfu} |")
    return "\n".join(lines)


def findings(out: dict) -> list[str]:
    """What the figures say against the issue's targets (packed >= 2x padded tokens/s, MFU >= 35%)."""
    res = {r["id"]: r for r in out["results"] if "error" not in r}
    packed = [r for r in res.values() if r["variant"] == "packed (bfd)" and r["attn"] == "varlen"
              and "Liger" in r["settings"]]
    if "padded-default" not in res or not packed:
        return ["Not enough variants ran to compare; see the table."]
    best = max(packed, key=lambda r: r["tokens_per_s"])
    first = min(packed, key=lambda r: r["batch"])
    hit = [r for r in packed if (r["mfu"] or 0) >= 0.35 and r["vs_default"] >= 2]
    lines = [
        f"Targets (packed >= 2x padded tokens/s, MFU >= 35%): {'met' if hit else 'NOT met'}"
        + (f", from {min(r['batch'] for r in hit)} packed rows per step on." if hit else ".")
        + f" Packed (BFD) rows on tuneforge's `varlen` attention with Liger kernels, at TRL's default "
        f"{first['batch']} rows per step: {first['vs_default']:.2f}x padded batches with TRL's defaults and "
        f"{first['vs_same']:.2f}x the fastest padded run with the same rows and settings, MFU "
        f"{100 * first['mfu']:.1f}%. Best: {best['batch']} rows, {best['tokens_per_s']:,.0f} tokens/s, MFU "
        f"{100 * best['mfu']:.1f}%"
        + (f" ({100 * best['tokens_per_s'] * out['flops_per_token'] / (out['matmul_tflops'] * 1e12):.0f}% of the "
           f"{out['matmul_tflops']:.0f} TFLOP/s an 8192^3 bf16 matmul reached in the same process)."
           if out.get("matmul_tflops") else "."),
        "",
    ]
    eq = [(p, r) for p in packed for r in res.values() if r["variant"] == "padded" and r["settings"] == p["settings"]
          and abs(r["tokens_per_step"] / p["tokens_per_step"] - 1) < 0.05]
    if eq:
        p, r = max(eq, key=lambda pr: pr[1]["tokens_per_s"])
        eff = padding_efficiency(r["batch"])
        lines += [
            f"Read the ratios with the batch in mind. A packed row holds about {p['tokens_per_step'] / p['batch']:,.0f} "
            f"real tokens against {r['tokens_per_step'] / r['batch']:,.0f} in a padded row, so at equal rows a packed "
            f"step carries about twice the tokens."
            + (f" A batch of {r['batch']} dialogues padded to its longest is {100 * eff:.0f}% real tokens on this data "
               f"(seeded draw of 2,000 batches from the shipped lengths)." if eff else "")
            + f" At equal real tokens per step ({p['batch']} packed rows, {p['tokens_per_step']:,.0f} tokens, against "
            f"{r['batch']} padded rows, {r['tokens_per_step']:,.0f}) packing is "
            f"{p['tokens_per_s'] / r['tokens_per_s']:.2f}x the fastest padded run (`{r['attn']}`, which already skips "
            f"attention over padding); removing the padding's MLP and LM-head work is what is left to gain there.",
            "",
        ]
    if len(packed) >= 2:
        a, b = sorted(packed, key=lambda r: r["tokens_per_step"])[:2]
        slope = (b["step_s"] - a["step_s"]) / (b["tokens_per_step"] - a["tokens_per_step"])
        fixed = a["step_s"] - slope * a["tokens_per_step"]
        lines += [
            f"Why MFU grows with the batch: step time fits {fixed * 1e3:.0f} ms fixed plus {slope * 1e6:.2f} us per "
            f"token between {a['batch']} and {b['batch']} packed rows; the fixed part (kernel launches of 24 eager "
            f"layers, the optimizer step, the Trainer's bookkeeping) is a third of an {a['batch']}-row step, and "
            f"the per-token part alone runs at {100 / slope * out['flops_per_token'] / (out['peak_tflops'] * 1e12):.0f}% MFU.",
            "",
        ]
    ps, pv = res.get("packed-sdpa-b8"), res.get("packed-varlen-b8")
    nll = res.get("packed-varlen-nll-b8")
    if ps and pv:
        lines += [
            f"Packed rows on `sdpa` ran at {ps['tokens_per_s']:,.0f} tokens/s, {pv['tokens_per_s'] / ps['tokens_per_s']:.1f}x "
            f"slower than on `varlen`: transformers gives SDPA a materialised block-diagonal mask, which takes it off "
            f"its flash kernel. That is why `tuneforge train` picks `varlen` for packed or padding-free sft on a "
            f"CUDA GPU when the config names no attention."
            + (f" Liger's fused linear cross-entropy (no full-vocabulary logits) against TRL's `nll` loss: "
               f"{pv['tokens_per_s'] / nll['tokens_per_s']:.2f}x the speed at {pv['peak_gib']:.0f} instead of "
               f"{nll['peak_gib']:.0f} GiB." if nll else ""),
            "",
        ]
    kc = out.get("kernel_check")
    if kc:
        e = kc["rel_err_vs_fp64"]
        lines += [
            f"Correctness, checked before timing: the `varlen` flash path in bf16 against its exact masked path in "
            f"float64 on {kc['tokens']:,} tokens of {kc['sequences']} real-length sequences (14 query / 2 key-value "
            f"heads): relative error out {e['out']:.1e}, dq {e['dq']:.1e}, dk {e['dk']:.1e}, dv {e['dv']:.1e} (bf16 "
            f"rounding is about 4e-3); CPU tests check the masked path against SDPA on each sequence alone.",
            "",
        ]
    return lines


def report(json_path: Path) -> None:
    """Write (or replace) the `## Training (SFT throughput)` section of benchmarks/RESULTS.md."""
    sys.path.insert(0, str(HERE))
    from results_md import write_section

    out = json.loads(json_path.read_text("utf-8"))
    add_ratios(out)
    d = out["data"]
    section = "\n".join([
        "## Training (SFT throughput)",
        "",
        f"`benchmarks/train.py` on one {out['gpu']} through the device tool: {out['model']} "
        f"({out['params'] / 1e6:.0f}M parameters), bf16 weights, max_length {MAX_LEN}, full fine-tuning with TRL's "
        f"SFTTrainer on pre-tokenized rows (tuneforge's `sft` path), AdamW, one process. Data: the {d['dialogues']} "
        f"hotel dialogues of `{d['source']}` (mean {d['mean_len']:.0f}, max {d['max_len']} SmolLM2 tokens), "
        f"repeated and shuffled. {out['steps']} timed steps after {out['warmup']} warm-up steps, every variant in "
        f"the same process; tokens/s counts real (non-padding) tokens; MFU = useful FLOPs "
        f"({out['flops_per_token'] / 1e9:.2f} GFLOP/token: 6 x matmul parameters incl. the LM head, plus causal "
        f"attention over each token's own context) over the {out['peak_tflops']} TFLOP/s dense bf16 datasheet "
        f"peak. `varlen` is `tuneforge.trainers.attention` (PyTorch's FlashAttention-2 varlen kernel; "
        f"`flash-attn` has no wheel for the GPU machine); Liger = `use_liger_kernel: true` (fused RMSNorm, RoPE, "
        f"SwiGLU, linear cross-entropy); TRL defaults = activation checkpointing on, `chunked_nll` loss. "
        f"Versions: " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()) + f". Raw figures: "
        f"`{json_path.resolve().relative_to(REPO) if json_path.resolve().is_relative_to(REPO) else json_path.name}`.",
        "",
        table(out),
        "",
        *findings(out),
        f"Commands: `.venv/bin/python benchmarks/train.py prepare` (here), `python3 benchmarks/train.py run --json "
        f"OUT.json` (on the GPU, with trl, datasets, transformers {out['versions']['transformers']} and "
        f"liger-kernel carried as wheels), `.venv/bin/python benchmarks/train.py report OUT.json` (here).",
    ])
    write_section(HERE / "RESULTS.md", "Training (SFT throughput)", section)
    print(section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--recipe", type=Path, default=REPO / "datasets" / "hotel" / "recipe.yaml")
    p.add_argument("--out", type=Path, default=DATA)
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, default=DATA)
    r.add_argument("--json", type=Path)
    r.add_argument("--tiny", action="store_true", help="toy model on CPU: checks the script, measures nothing")
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--warmup", type=int, default=5)
    r.add_argument("--only", help="comma-separated variant ids to run (default: all)")
    rp = sub.add_parser("report")
    rp.add_argument("json", type=Path)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.out, a.recipe.resolve())
        sys.path.insert(0, str(REPO))
        from tuneforge.common.models import load_tokenizer

        load_tokenizer("embedded:smollm2").save_pretrained(str(a.out.parent / "tokenizer"))
    elif a.cmd == "run":
        run(a.data, a.json, a.tiny, a.steps, a.warmup, only=a.only.split(",") if a.only else None)
    else:
        report(a.json)


if __name__ == "__main__":
    main()
