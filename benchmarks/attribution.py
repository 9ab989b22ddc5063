"""Can attribution find a planted cause of forgetting? (issue #36)

Mixes into the shipped hotel SFT data (CrossWOZ hotel dialogues, datasets/hotel) a small set of records built to
cause forgetting: C-Eval dev questions in the forgetting check's chat layout, always answered `A`. Trains a LoRA
on the embedded SmolLM2, runs the forgetting check (C-Eval val, chat, 0-shot), attributes the lost questions to
the training records, and measures:

* AUROC and precision@K of the planted records under the attribution ranking and three baselines from the same
  run: random order, embedding similarity (the base model's mean last hidden state, cosine between each record
  and the lost questions, mean over them) and per-record training loss (the tuned model's loss on the record);
  95% intervals by bootstrap over records (AUROC, stratified) and Wilson (precision@K);
* the causal check: retrain without the top-K attributed records, without K random records (three draws) and
  without the whole plant, each checked against the same base evaluation: lost questions and domain gain
  (mean assistant-token loss on the held-out hotel dialogues, base minus tuned, with a bootstrap interval).

    .venv/bin/python benchmarks/attribution.py --out runs/bench-attribution                # CPU, small
    .venv/bin/python benchmarks/attribution.py --device cuda --hotel 400 --plant 40 --steps 200 \\
        --eval-limit 0 --out runs/bench-attribution-gpu                                    # a GPU, larger

Targets (issue #36): AUROC >= 0.9; removing the top-K recovers >= half the questions the plant lost and >= 2x
what removing K random records recovers (mean of the draws). The section it writes to benchmarks/RESULTS.md
states what was measured; nothing in it is written ahead of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from attribution_plant import plant_rows  # noqa: E402  (tests/attribution_plant.py: the plant's layout)

CEVAL = REPO.parent / "shared" / "corpora" / "ceval"
HOTEL = REPO / "datasets" / "hotel" / "data" / "crosswoz_val_hotel.json"
EVAL_SUBJECTS = ["law", "legal_professional", "marxism", "mao_zedong_thought", "modern_chinese_history",
                 "ideological_and_moral_cultivation", "high_school_history", "middle_school_history",
                 "art_studies", "chinese_language_and_literature", "logic", "education_science"]
# general instruction data mixed in at larger sizes (records: 1,000, 2,449, 689; ../shared/corpora/README.md)
GENERAL = [(REPO.parent / "shared" / "corpora" / "llamafactory" / "alpaca_zh_demo.json", "alpaca", "Apache-2.0",
            "hiyouga/LLaMA-Factory@ff6d4d1 data/alpaca_zh_demo.json"),
           (REPO.parent / "shared" / "corpora" / "chinese-llama-alpaca-3" / "ruozhiba_qa2449_gpt4o.json", "alpaca",
            "Apache-2.0", "ymcui/Chinese-LLaMA-Alpaca-3@58a4b6c data/ruozhiba_qa2449_gpt4o.json"),
           (REPO.parent / "shared" / "corpora" / "chatglm-efficient-tuning" / "oaast_sft_zh.json", "alpaca",
            "Apache-2.0", "hiyouga/ChatGLM-Efficient-Tuning@3c12daa data/oaast_sft_zh.json")]
GENERAL_SIZES = [1000, 2449, 689]
PLANT_SUBJECTS = ["college_economics", "business_administration", "accountant", "tax_accountant",
                  "civil_servant", "teacher_qualification", "sports_science", "plant_protection",
                  "basic_medicine", "clinical_medicine", "urban_and_rural_planner", "fire_engineer"]


# ---------------------------------------------------------------- data


def build(work: Path, n_hotel: int, n_plant: int, seed: int, n_general: int = 0) -> Path:
    """A recipe of the hotel dialogues (first n_hotel), the plant and, at larger sizes, the first n_general
    general instructions (GENERAL: real Alpaca-style data in Chinese); `tuneforge build` it."""
    import yaml

    from tuneforge.builder import build as run_build

    rdir = work / "recipe"
    rdir.mkdir(parents=True, exist_ok=True)
    plant = plant_rows(CEVAL, PLANT_SUBJECTS, n_plant)
    (rdir / "plant.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in plant), "utf-8")
    recipe = {"name": "hotel-plant", "seed": seed, "template": "chatml", "formats": [],
              "sources": [{"name": "crosswoz_hotel", "path": str(HOTEL), "format": "crosswoz", "allow_outside": True,
                           "options": {"domains": ["酒店"], "domain_match": "any"}, "limit": n_hotel,
                           "license": "Apache-2.0", "origin": "thu-coai/CrossWOZ@df82c9f data/crosswoz/val.json"},
                          {"name": "plant", "path": "plant.jsonl", "format": "messages", "license": "CC-BY-NC-SA-4.0",
                           "origin": "C-Eval dev questions, answers replaced by A"}],
              "clean": {"dedup": {"exact": True, "near": False}},
              # the plant is a small source (whole in train); the hotel dialogues keep a held-out fifth
              "split": {"ratios": {"train": 0.8, "validation": 0.2, "test": 0.0}, "small_source": n_plant + 1}}
    left = n_general
    for i, (path, fmt, lic, origin) in enumerate(GENERAL):
        if left <= 0:
            break
        take = min(left, GENERAL_SIZES[i])
        recipe["sources"].append({"name": f"general{i}", "path": str(path), "format": fmt, "limit": take,
                                  "allow_outside": True, "license": lic, "origin": origin})
        left -= take
    (rdir / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), "utf-8")
    run_build(rdir / "recipe.yaml", work / "data")
    return work / "data"


def without(data: Path, ids: set[str], out: Path) -> Path:
    """The build minus the training rows `ids` (what `tuneforge build --exclude` makes), as a build folder."""
    from datasets import DatasetDict, load_from_disk
    from tuneforge.common.io import sha256_text

    manifest = json.loads((data / "manifest.json").read_text("utf-8"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for sub in manifest["datasets"].values():
        dd = load_from_disk(str(data / sub))
        dd["train"] = dd["train"].filter(lambda r: r["id"] not in ids)
        # an empty split saves as no shard, which load_from_disk cannot read back: leave it out
        DatasetDict({k: v for k, v in dd.items() if len(v)}).save_to_disk(str(out / sub))
    manifest["sha256"] = sha256_text(manifest.get("sha256", "") + "|" + ",".join(sorted(ids)))
    (out / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    return out


# ---------------------------------------------------------------- train, check


def train_cfg(data: Path, a: argparse.Namespace) -> dict:
    return {"base_model": "embedded:smollm2", "dataset": str(data), "stage": "sft", "max_length": a.max_length,
            "splits": {"train": "train", "eval": None}, "seed": a.seed,
            "lora": {"r": a.rank, "alpha": 2 * a.rank, "dropout": 0.0},
            "args": {"max_steps": a.steps, "per_device_train_batch_size": a.batch, "logging_steps": 1,
                     "learning_rate": a.lr, "warmup_steps": 0, "save_strategy": "no", "dataloader_num_workers": 0,
                     "gradient_checkpointing": False},
            "truncation": {"max_drop_share": 0.2}}


def check(adapter: Path, out: Path, a: argparse.Namespace) -> dict:
    from tuneforge.eval import run_forgetting

    suites = [{"benchmark": f"ceval:{CEVAL}", "subjects": EVAL_SUBJECTS, "shots": 0,
               "limit": a.eval_limit or None}]
    cfg = {"chat": True, "suites": suites, "device": a.device, "perplexity": {"limit": 1, "max_length": 32}}
    return run_forgetting("embedded:smollm2", adapter=str(adapter), out=out, config=cfg,
                          base_eval=a.work / "base-eval")


def trial(name: str, data: Path, a: argparse.Namespace, held: list) -> dict:
    """Train on `data`, run the check, measure the domain loss; cached by folder (a re-run reuses it)."""
    from tuneforge.trainers import train

    d = a.work / name
    done = d / "trial.json"
    if done.is_file():
        return json.loads(done.read_text("utf-8"))
    if (d / "run").exists():
        shutil.rmtree(d / "run")
    t = time.perf_counter()
    s = train(train_cfg(data, a), d / "run")
    res = check(Path(s["final"]), d / "forget", a)
    fg = res["forgetting"]
    lost = sorted(f"{n}/{f['uid']}" for n, blk in fg["suites"].items() for f in blk["flips"])
    out = {"name": name, "lost": len(lost), "lost_ids": lost, "questions": sum(b["n"] for b in fg["suites"].values()),
           "gained": sum(b["gained"] for b in fg["suites"].values()), "verdict": fg["verdict"],
           "delta": {n: b["delta"] for n, b in fg["suites"].items()}, "adapter": s["final"],
           "domain_loss": domain_losses(s["final"], held, a.device), "seconds": round(time.perf_counter() - t, 1)}
    done.write_text(json.dumps(out), "utf-8")
    return out


# ---------------------------------------------------------------- measurements


def _model(adapter: str | None, device: str) -> Any:
    import torch

    from tuneforge.common.models import load_causal_lm

    m = load_causal_lm("embedded:smollm2", dtype=torch.float32, device=device)
    if adapter:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter)
    return m.eval()


def _fitted(rows: list[dict], max_length: int) -> list[dict]:
    from tuneforge.common.models import load_tokenizer
    from tuneforge.templates import get_template
    from tuneforge.trainers import truncation as tr

    tok, tpl = load_tokenizer("embedded:smollm2"), get_template("chatml")
    out = []
    for r in rows:
        f = tr.fit_sft(r["messages"], tok, tpl, max_length)
        if f[tr.STATUS] != tr.DROPPED:
            out.append({"id": r["id"], "input_ids": f["input_ids"], "labels": f["labels"]})
    return out


def _losses(model: Any, rows: list[dict], device: str) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]], device=device)
            lab = torch.tensor([r["labels"]], device=device)
            lg = model(input_ids=ids).logits[0, :-1].float()
            out.append(float(torch.nn.functional.cross_entropy(lg, lab[0, 1:], ignore_index=-100)))
    return np.array(out)


def domain_losses(adapter: str | None, held: list[dict], device: str) -> list[float]:
    return _losses(_model(adapter, device), held, device).tolist()


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(scores)
    pos = labels.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auroc_ci(scores: np.ndarray, labels: np.ndarray, iters: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Stratified bootstrap over records (planted and others resampled separately)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels.astype(bool))
    vals = []
    for _ in range(iters):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        vals.append(auroc(scores[idx], labels[idx]))
    lo, hi = np.quantile(vals, [0.025, 0.975])
    return float(lo), float(hi)


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z, p = 1.96, k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, c - h), min(1.0, c + h)


def ranking_figures(name: str, scores: np.ndarray, labels: np.ndarray, k: int, seed: int) -> dict:
    top = np.argsort(-scores, kind="stable")[:k]
    hits = int(labels[top].sum())
    lo, hi = auroc_ci(scores, labels, seed=seed)
    plo, phi = wilson(hits, k)
    return {"name": name, "auroc": auroc(scores, labels), "auroc_ci": [lo, hi], "precision_at_k": hits / k,
            "precision_ci": [plo, phi], "hits": hits, "k": k}


def embedding_scores(records: list[dict], lost_prompts: list[str], device: str) -> np.ndarray:
    """Cosine between the base model's mean last hidden state of each record's text and of each lost
    question's prompt, mean over the lost questions."""
    import torch

    from tuneforge.common.models import load_tokenizer

    tok = load_tokenizer("embedded:smollm2")
    m = _model(None, device)

    def emb(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            h = m(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).hidden_states[-1][0]
        v = h.mean(0).float().cpu().numpy()
        return v / max(np.linalg.norm(v), 1e-12)

    R = np.stack([emb(r["input_ids"]) for r in records])
    Q = np.stack([emb(tok(p).input_ids) for p in lost_prompts])
    return (R @ Q.T).mean(axis=1)


def boot_mean_diff(a: list[float], b: list[float], iters: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a - b) over paired rows with a bootstrap 95% interval."""
    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    draws = d[rng.integers(0, len(d), size=(iters, len(d)))].mean(axis=1)
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi)


# ---------------------------------------------------------------- the run


def run(a: argparse.Namespace) -> dict:
    from datasets import load_from_disk
    from tuneforge.attribute.run import Method, attribute

    t0 = time.perf_counter()
    a.work.mkdir(parents=True, exist_ok=True)
    data = a.work / "data"
    if not (data / "manifest.json").is_file():
        build(a.work, a.hotel, a.plant, a.seed, a.general)
    manifest = json.loads((data / "manifest.json").read_text("utf-8"))
    dd = load_from_disk(str(data / manifest["datasets"]["messages"]))
    train_rows = [dict(r, meta=json.loads(r["meta"])) for r in dd["train"]]
    held = _fitted([dict(r) for r in dd["validation"]], a.max_length)
    planted = {r["id"] for r in train_rows if r["meta"]["source"] == "plant"}
    base_domain = domain_losses(None, held, a.device)
    t_build = time.perf_counter() - t0

    full = trial("full", data, a, held)
    t_attr = time.perf_counter()
    s = attribute(a.work / "full" / "forget", a.work / "attr", device=a.device,
                  method=Method(proj_dim=a.proj_dim, min_lost=1, seed=a.seed))
    t_attr = time.perf_counter() - t_attr
    loop = None
    if a.compare_loop and s["status"] == "ranked":  # the same ranking by the other per-example path
        t_loop = time.perf_counter()
        other = "batched" if (s.get("timing") or {}).get("per_example") != "batched" else "loop"
        sl = attribute(a.work / "full" / "forget", a.work / "attr-loop", device=a.device, use_cache=False,
                       method=Method(proj_dim=a.proj_dim, min_lost=1, seed=a.seed, per_example=other))
        t_loop = time.perf_counter() - t_loop
        got = {r["id"]: r["score"] for r in map(json.loads, (a.work / "attr" / "attribution.jsonl")
                                               .read_text("utf-8").splitlines())}
        ref = {r["id"]: r["score"] for r in map(json.loads, (a.work / "attr-loop" / "attribution.jsonl")
                                               .read_text("utf-8").splitlines())}
        ids_ = sorted(ref)
        x, y = np.array([got[i] for i in ids_]), np.array([ref[i] for i in ids_])
        k_ = a.k or a.plant
        top_b = set(sorted(ids_, key=lambda i: -got[i])[:k_])
        top_l = set(sorted(ids_, key=lambda i: -ref[i])[:k_])
        loop = {"seconds": round(t_loop, 1), "timing": sl.get("timing"), "max_abs_diff": float(np.abs(x - y).max()),
                "pearson": float(np.corrcoef(x, y)[0, 1]), "top_k_same": len(top_b & top_l), "k": k_}
    result: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                              "records": len(train_rows), "planted": len(planted), "held_out": len(held),
                              "full": full, "attribution_seconds": round(t_attr, 1),
                              "attribution_timing": s.get("timing"), "status": s["status"],
                              "attribution_cached": (s.get("cache") or {}).get("hit"), "loop": loop}
    if s["status"] != "ranked":
        result["message"] = s["message"]
        result["seconds"] = round(time.perf_counter() - t0, 1)
        return result
    ranked = [json.loads(x) for x in (a.work / "attr" / "attribution.jsonl").read_text("utf-8").splitlines()]
    ids = [r["id"] for r in ranked]
    labels = np.array([i in planted for i in ids])
    k = a.k or len(planted)
    figs = [ranking_figures("attribution (TracIn, projected)", np.array([r["score"] for r in ranked]), labels, k,
                            a.seed)]
    # random order: the mean over many orders, and the spread of one order
    rng = np.random.default_rng(a.seed)
    rnd = [(auroc(sc, labels), float(labels[np.argsort(-sc)[:k]].mean()))
           for sc in (rng.random(len(labels)) for _ in range(1000))]
    ra = np.array(rnd)
    figs.append({"name": "random order (1000 orders)", "auroc": float(ra[:, 0].mean()),
                 "auroc_ci": np.quantile(ra[:, 0], [0.025, 0.975]).tolist(), "precision_at_k": float(ra[:, 1].mean()),
                 "precision_ci": np.quantile(ra[:, 1], [0.025, 0.975]).tolist(), "k": k})
    by_id = {r["id"]: r for r in train_rows}
    fitted = {r["id"]: r for r in _fitted([by_id[i] for i in ids], a.max_length)}
    recs = [fitted[i] for i in ids]
    lost_prompts = _lost_prompts(a.work / "full" / "forget")
    figs.append(ranking_figures("embedding similarity to lost questions", embedding_scores(recs, lost_prompts,
                                                                                             a.device), labels, k, a.seed))
    figs.append(ranking_figures("per-record training loss (tuned)", _losses(_model(full["adapter"], a.device), recs,
                                                                            a.device), labels, k, a.seed))
    result["ranking"] = figs

    # causal check
    top = set(ids[:k])
    trials = {"top": trial("minus-top", without(data, top, a.work / "data-minus-top"), a, held) if top != planted
              else trial("minus-plant", without(data, planted, a.work / "data-minus-plant"), a, held)}
    trials["plant"] = trial("minus-plant", without(data, planted, a.work / "data-minus-plant"), a, held)
    rand = []
    for d in range(a.draws):
        pick = set(random.Random(a.seed * 1000 + d).sample(ids, k))
        rand.append(trial(f"minus-random-{d}", without(data, pick, a.work / f"data-minus-random-{d}"), a, held))
    plant_lost = full["lost"] - trials["plant"]["lost"]
    rec_top = full["lost"] - trials["top"]["lost"]
    rec_rand = [full["lost"] - r["lost"] for r in rand]

    def gain(tr: dict) -> list[float]:
        return list(boot_mean_diff(base_domain, tr["domain_loss"], seed=a.seed))

    result["causal"] = {"k": k, "top_is_plant": top == planted, "top_planted": len(top & planted),
                        "lost": {"full": full["lost"], "minus_top": trials["top"]["lost"],
                                 "minus_plant": trials["plant"]["lost"], "minus_random": [r["lost"] for r in rand]},
                        "questions": full["questions"], "plant_lost": plant_lost, "recovered_top": rec_top,
                        "recovered_random": rec_rand, "recovered_random_mean": float(np.mean(rec_rand)),
                        "recovered_random_sd": float(np.std(rec_rand, ddof=1)) if len(rec_rand) > 1 else 0.0,
                        "domain_gain": {"full": gain(full), "minus_top": gain(trials["top"]),
                                        "minus_plant": gain(trials["plant"]),
                                        "minus_random": [gain(r) for r in rand]},
                        "seconds": {n: t["seconds"] for n, t in [("full", full), *trials.items()]}
                        | {f"random-{i}": r["seconds"] for i, r in enumerate(rand)}}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["build_seconds"] = round(t_build, 1)
    return result


def _lost_prompts(forget: Path) -> list[str]:
    from tuneforge.attribute.inputs import forgetting_results, lost_questions

    _, res = forgetting_results(forget)
    return [q.prompt for q in lost_questions(res)[0]]


def _f(x: float) -> str:
    return f"{x:.3f}"


def section(device: str) -> str:
    """RESULTS.md keeps the CPU run and the GPU run apart."""
    return "attribution" if device == "cpu" else "attribution on a GPU"


def markdown(r: dict) -> str:
    a = r["args"]
    cmd = (f"benchmarks/attribution.py --device {a['device']} --hotel {a['hotel']} --plant {a['plant']} --general "
           f"{a.get('general', 0)} --steps {a['steps']} --lr {a['lr']} --batch {a['batch']} --max-length "
           f"{a['max_length']} --rank {a['rank']} --eval-limit {a['eval_limit']} --proj-dim {a['proj_dim']} --seed "
           f"{a['seed']}{' --compare-loop' if a.get('compare_loop') else ''}")
    lines = [f"## {section(a['device'])}", "",
             "Planted-cause benchmark for `tuneforge attribute` (issue #36): C-Eval dev questions answered always `A`, "
             "mixed into the CrossWOZ hotel dialogues; LoRA SFT of the embedded SmolLM2-135M-Instruct; forgetting check "
             "on C-Eval val (chat layout, 0-shot).", "", f"Command: `{cmd}` ({a['device']}). Wall time of this invocation {r.get('seconds')} s; a trial "
             "already made by an earlier invocation into the same --out is reused (its own time is listed below).",
             "",
             f"{r['records']} training records ({r['planted']} planted), {r['held_out']} held-out hotel dialogues; "
             f"the check compared {r['full']['questions']} questions and lost {r['full']['lost']} "
             f"(gained {r['full']['gained']}; verdict `{r['full']['verdict']}`).", ""]
    if r["status"] != "ranked":
        return "\n".join(lines + [r.get("message", ""), ""])
    t = r.get("attribution_timing") or {}
    lines += [f"Attribution: {t.get('adapter_weights', 0):,} adapter weights projected to {a['proj_dim']}; "
              f"gradients {t.get('gradients_s')} s for {t.get('records')} records + {t.get('lost')} lost questions "
              f"({t.get('checkpoints')} checkpoint(s)), model load {t.get('load_s')} s"
              f"{' (computed by an earlier invocation, served from its cache here)' if r.get('attribution_cached') else ''}.",
              ""]
    lp = r.get("loop")
    if lp:
        lt = lp.get("timing") or {}
        rate = lambda tt: tt["records"] / tt["gradients_s"] if tt.get("gradients_s") else float("nan")  # noqa: E731
        b, lo = (t, lt) if t.get("per_example") == "batched" else (lt, t)
        lines += [f"Per-example gradients on the same run: batched {b.get('gradients_s')} s, one backward a record "
                  f"{lo.get('gradients_s')} s (batched at {rate(b) / rate(lo):.2f}x the loop's speed; "
                  f"{rate(b):.1f} and {rate(lo):.1f} records/s, lost questions included in both times). Scores: "
                  f"largest difference {lp['max_abs_diff']:.2e}, Pearson {lp['pearson']:.6f}, "
                  f"{lp['top_k_same']} of the top {lp['k']} the same.", ""]
    lines += [f"| ranking | AUROC [95% CI] | precision@{r['ranking'][0]['k']} [95% CI] |", "|---|---|---|"]
    for f in r["ranking"]:
        lines.append(f"| {f['name']} | {_f(f['auroc'])} [{_f(f['auroc_ci'][0])}, {_f(f['auroc_ci'][1])}] | "
                     f"{_f(f['precision_at_k'])} [{_f(f['precision_ci'][0])}, {_f(f['precision_ci'][1])}] |")
    lines += ["", "AUROC intervals: stratified bootstrap over records (2,000 draws); precision: Wilson; random order: "
              "the mean and the 2.5-97.5% range over 1,000 orders."]
    n_pos, n_neg = r["planted"], r["records"] - r["planted"]
    if any(f["auroc_ci"][0] == f["auroc_ci"][1] for f in r["ranking"]):
        lines.append(f"A ranking that separates the two groups completely has a one-point bootstrap interval; with "
                     f"{n_pos} planted and {n_neg} other records one misplaced pair moves AUROC by "
                     f"{1 / (n_pos * n_neg):.4f}.")
    lines.append("")
    c = r.get("causal")
    if c:
        g = c["domain_gain"]

        def gl(x: list[float]) -> str:
            return f"{_f(x[0])} [{_f(x[1])}, {_f(x[2])}]"

        same = " and were exactly the plant, so those two rows are one trial" if c["top_is_plant"] else ""
        lines += [f"Causal check (K = {c['k']}; the top K held {c['top_planted']} planted records{same}):", "",
                  "| training data | lost questions | recovered vs full | domain gain (base - tuned loss) [95% CI] |",
                  "|---|---:|---:|---|",
                  f"| full (with the plant) | {c['lost']['full']} | - | {gl(g['full'])} |",
                  f"| minus the top K attributed | {c['lost']['minus_top']} | {c['recovered_top']} | {gl(g['minus_top'])} |",
                  f"| minus the whole plant | {c['lost']['minus_plant']} | {c['plant_lost']} | {gl(g['minus_plant'])} |"]
        for i, (lv, rv, gv) in enumerate(zip(c["lost"]["minus_random"], c["recovered_random"], g["minus_random"],
                                             strict=True)):
            lines.append(f"| minus K random (draw {i + 1}) | {lv} | {rv} | {gl(gv)} |")
        share = c["recovered_top"] / c["plant_lost"] if c["plant_lost"] > 0 else float("nan")
        ratio = (c["recovered_top"] / c["recovered_random_mean"] if c["recovered_random_mean"] > 0
                 else float("inf") if c["recovered_top"] > 0 else float("nan"))
        auc = r["ranking"][0]["auroc"]
        lines += ["", f"The plant lost {c['plant_lost']} questions (full minus no-plant). Removing the top K recovered "
                  f"{c['recovered_top']} ({share:.0%} of the plant's); removing K random records recovered "
                  f"{c['recovered_random_mean']:.2f} on average (sd {c['recovered_random_sd']:.2f} over "
                  f"{len(c['recovered_random'])} draws), ratio {ratio:.2f}. Targets: AUROC >= 0.9 "
                  f"({'met' if auc >= 0.9 else 'not met'}: {auc:.3f}), top-K recovery >= half the plant's "
                  f"({'met' if share >= 0.5 else 'not met'}), >= 2x random ({'met' if ratio >= 2 else 'not met'}). "
                  "Lost-question counts are single runs (one training seed); with few questions, a difference of a "
                  "few is within run-to-run noise.", "",
                  "Wall time per trial (train + check + domain loss): "
                  + ", ".join(f"{k} {v} s" for k, v in c["seconds"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", dest="work", type=Path, default=REPO / "runs" / "bench-attribution")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--hotel", type=int, default=24, help="hotel dialogues read (4/5 train, 1/5 held out)")
    ap.add_argument("--plant", type=int, default=6, help="planted records")
    ap.add_argument("--general", type=int, default=0, help="general instruction records mixed in (up to 4,138)")
    ap.add_argument("--compare-loop", action="store_true",
                    help="also attribute by the other per-example path (batched or one backward a record) and compare")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--eval-limit", type=int, default=6, help="questions per C-Eval subject (0: all)")
    ap.add_argument("--proj-dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=0, help="records removed in the causal check (default: the plant's size)")
    ap.add_argument("--draws", type=int, default=3, help="random-removal draws")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--no-md", action="store_true", help="do not write benchmarks/RESULTS.md")
    a = ap.parse_args()
    r = run(a)
    if a.json:
        a.json.write_text(json.dumps(r, indent=1), "utf-8")
    (a.work / "result.json").write_text(json.dumps(r, indent=1), "utf-8")
    md = markdown(r)
    print(md)
    if not a.no_md:
        from results_md import write_section

        write_section(HERE / "RESULTS.md", section(a.device), md)


if __name__ == "__main__":
    main()
