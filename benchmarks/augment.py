"""Augmentation throughput against the loopback fault-injection server (tests/fake_openai_server.py).

    .venv/bin/python benchmarks/augment.py [--requests 2000] [--concurrency 64] [--latency 0.1]

The server runs in its own process with a fixed latency; the public `run_augment` sends one `rewrite` request
per record through the real path (cache lookup, pacing, in-flight window, hedging, retries, SQLite write per
response). Every ratio is against the concurrency bound *measured in the same process tree*: the openai client
alone (`post()` on the aiohttp transport, what tuneforge uses; no cache, no operator) at the same window against
the same server, measured before and after the runs, the higher of the two taken. Targets: >= 0.9 without
faults; >= 0.8 with 10% faults (429 with Retry-After, 500, dropped connections, truncated bodies, hangs past the
deadline); 0 items lost. Also: a fully cached re-run as a fraction of the first run's time, and for context the
typed `chat.completions.create()` on the default httpx transport, and the theoretical concurrency / latency.
Writes the `## augment` section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/augment.py --embedded-json 200 [--json-concurrency 64] [--ops a,b]

instead measures the embedded model's JSON: each JSON operator over N real records through `run_augment`
with no repair round (the `## augment-embedded-json` section). Inputs come from ../shared/corpora, or the
folder `TUNEFORGE_BENCH_CORPORA` names (a copy of the four files it reads, for a machine without ../shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from results_md import write_section  # benchmarks/ is on sys.path when a script runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_openai_server.py"), "--latency", str(latency),
                             "--hang-s", "3"], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}"


def control(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method="POST" if data is not None or path != "/_stats" else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def records(n: int, tag: str) -> list[dict]:
    from tuneforge.common.records import new_record, provenance

    return [new_record("messages", provenance("bench", f"{tag}.jsonl", i, i), messages=[
        {"role": "user", "content": f"请帮我找一家安静一点的酒店，第{tag}组之{chr(0x4e00 + i % 2000)}{chr(0x4e00 + i // 2000)}"},
        {"role": "assistant", "content": "好的，请问您的预算是多少？"}]) for i in range(n)]


def run(recs: list[dict], url: str, cache: Path, concurrency: int, timeout: float = 30.0) -> tuple[float, object]:
    from tuneforge.augment import AugmentConfig, run_augment

    cfg = AugmentConfig.model_validate({
        "llm": {"base_url": f"{url}/v1", "model": "bench", "concurrency": concurrency, "timeout_s": timeout,
                "max_attempts": 6, "backoff_base_s": 0.05, "backoff_max_s": 1.0},
        "cache": str(cache),
        "steps": [{"op": "rewrite", "params": {"context_turns": 0}}]})
    t = time.perf_counter()
    res = run_augment(recs, cfg, seed=0, progress=False)
    return time.perf_counter() - t, res


def bare_client(url: str, n: int, concurrency: int, typed: bool) -> float:
    """The openai client alone at the same window: typed `create()` (httpx) or `post()` on aiohttp."""
    import httpx2
    import openai

    async def go() -> float:
        http = None if typed else openai.DefaultAioHttpClient()
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, http_client=http)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            msgs = [{"role": "user", "content": f"bare {typed} {i}"}]
            async with sem:
                if typed:
                    await client.chat.completions.create(model="bench", max_tokens=512, messages=msgs)
                else:
                    r = await client.post("/chat/completions", cast_to=httpx2.Response,
                                          body={"model": "bench", "max_tokens": 512, "messages": msgs})
                    json.loads(await r.aread())

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        dt = time.perf_counter() - t
        await client.close()
        return dt

    return asyncio.run(go())


SHARED = Path(os.environ.get("TUNEFORGE_BENCH_CORPORA") or REPO.parent / "shared" / "corpora")


def json_records(op: str, n: int) -> list[dict]:
    """Real inputs for each JSON operator, from ../shared/corpora."""
    from tuneforge.common.records import new_record, provenance

    if op == "question_from_passage":
        texts = (SHARED / "llamafactory" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()
        texts += [json.loads(x)["text"] for x in (SHARED / "llamafactory" / "c4_demo.jsonl").read_text(
            encoding="utf-8").splitlines()]
        return [new_record("text", provenance("bench", "passages", i, i), text=t) for i, t in
                enumerate(t for t in texts if len(t) > 80)][:n]
    if op == "kb_queries":
        rows = json.loads((SHARED / "crosswoz" / "database" / "hotel_db.json").read_text(encoding="utf-8"))
        return [new_record("kb", provenance("hotel_db", "hotel_db.json", None, i), row=row)
                for i, (_, row) in enumerate(rows[:n])]
    dialogues = json.loads((SHARED / "crosswoz" / "val_first100.json").read_text(encoding="utf-8"))
    out = []
    for d_i, (tid, d) in enumerate(dialogues.items()):
        turns = [{"role": "user" if m["role"] == "usr" else "assistant", "content": m["content"]}
                 for m in d["messages"]]
        for k in range(0, len(turns) - 1, 2):  # each user/assistant exchange of a dialogue is one record
            out.append(new_record("messages", provenance("crosswoz", "val_first100.json", k, d_i, tid),
                                  messages=turns[k:k + 2]))
    return out[:n]


JSON_STEPS = {
    "question_from_passage": {"op": "question_from_passage", "lang": "en", "params": {"n": 1, "max_chars": 500}},
    "extend_turns": {"op": "extend_turns", "params": {"followups": 1, "closing": False}},
    "kb_queries": {"op": "kb_queries", "params": {"n": 1}},
    "judge_filter": {"op": "judge_filter", "params": {"threshold": 1}},
    "preference": {"op": "preference", "params": {"k": 1, "include_original": True, "margin": 0}},
}


def where() -> str:
    """The machine the embedded server's model runs on, as the server picks it (CUDA when there is one, unless
    TUNEFORGE_EMBEDDED_DEVICE says otherwise)."""
    import torch

    device = os.environ.get("TUNEFORGE_EMBEDDED_DEVICE", "auto")
    if torch.cuda.is_available() and (device == "auto" or device.startswith("cuda")):
        return f"one {torch.cuda.get_device_name(0)} GPU (model forward pass; masks and sampling on the CPU)"
    return f"the CPU ({os.cpu_count()} cores)"


def embedded_json(n: int, ops: list[str], write: bool, max_tokens: int, concurrency: int) -> None:
    """Schema validity of every JSON operator's replies on the embedded model, with no repair round."""
    from tuneforge.augment import AugmentConfig, run_augment

    os.environ.pop("OPENAI_BASE_URL", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for op in ops:
            # preference: one text sample and two JSON verdicts per record
            recs = json_records(op, n // 2 if op == "preference" else n)
            cfg = AugmentConfig.model_validate({
                "llm": {"max_tokens": max_tokens, "temperature": 0.7, "concurrency": concurrency, "timeout_s": 1800,
                        "max_attempts": 2, "repair_attempts": 0},
                "cache": str(Path(tmp) / f"{op}.sqlite"), "steps": [JSON_STEPS[op]]})
            t = time.perf_counter()
            res = run_augment(recs, cfg, seed=0, progress=False)
            dt = time.perf_counter() - t
            c = res.counts[op]
            total = c["json_valid"] + c["json_invalid"]
            rows.append((op, len(recs), total, c["json_valid"], c["json_valid"] / max(1, total), c["done"],
                         c["completion_tokens"], dt))
            print(rows[-1], flush=True)
            for reason, k in Counter(f["reason"][:160] for f in res.failures).most_common(5):
                print(f"   {k} x {reason}", flush=True)
    head = ("| operator | records | JSON replies | valid against the schema | fraction | items done (schema and "
            "the operator's own checks) | completion tokens | seconds |\n|---|---|---|---|---|---|---|---|")
    table = "\n".join([head] + [f"| `{r[0]}` | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]} | {r[6]} | {r[7]:.0f} |"
                                for r in rows])
    print(table)
    if write:
        replies = sum(r[2] for r in rows)
        worst = min(rows, key=lambda r: r[4])
        verdict = ("every operator >= 0.99 valid" if all(r[4] >= 0.99 for r in rows)
                   else f"below 0.99 for `{worst[0]}` ({worst[4]:.3f})")
        enough = all(r[2] >= 200 for r in rows)
        section = (f"## augment-embedded-json\n\n`python benchmarks/augment.py --embedded-json {n} --max-tokens "
                   f"{max_tokens} --json-concurrency {concurrency}` — every JSON operator on the embedded "
                   f"SmolLM2-135M through the public `run_augment`, grammar-constrained decoding "
                   f"(`response_format: json_schema`), `repair_attempts: 0`, temperature 0.7, real inputs from "
                   f"../shared/corpora. A reply counts as valid when it parses and validates against the "
                   f"operator's pydantic schema. Model on {where()}. {replies} JSON replies: {verdict}; "
                   f"{'at least' if enough else 'fewer than'} 200 replies for every operator.\n\n{table}\n")
        write_section(HERE / "RESULTS.md", "augment-embedded-json", section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--embedded-json", type=int, default=0, metavar="N",
                    help="instead: JSON validity of each JSON operator over N records on the embedded model")
    ap.add_argument("--ops", default=",".join(JSON_STEPS), help="with --embedded-json: which operators")
    ap.add_argument("--max-tokens", type=int, default=96, help="with --embedded-json")
    ap.add_argument("--json-concurrency", type=int, default=8,
                    help="with --embedded-json: requests in flight (the server batches them; on a CPU 8 at most)")
    a = ap.parse_args()
    if a.embedded_json:
        embedded_json(a.embedded_json, a.ops.split(","), not a.no_write, a.max_tokens, a.json_concurrency)
        return
    os.environ.pop("OPENAI_BASE_URL", None)
    theory = a.concurrency / a.latency
    proc, url = start_server(a.latency)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache.sqlite"
            # warm-up (imports, connection pool), not measured
            run(records(100, "warm"), url, Path(tmp) / "warm.sqlite", a.concurrency)
            bounds = [a.requests / bare_client(url, a.requests, a.concurrency, typed=False)]

            recs = records(a.requests, "clean")
            dt, res = run(recs, url, cache, a.concurrency)
            c0 = res.counts["rewrite"]
            rows.append(["no faults", a.requests, c0["done"], a.requests - c0["done"], res.usage["requests"],
                         c0["hedges"], dt])

            dt_cached, res_c = run(recs, url, cache, a.concurrency)
            assert res_c.usage["requests"] == 0, res_c.usage

            control(url, "/_config", {"fault_rate": 0.1, "faults": ["429", "500", "drop", "truncated", "hang"],
                                      "retry_after": 0.1})
            recs_f = records(a.requests, "faults")
            dt_f, res_f = run(recs_f, url, cache, a.concurrency, timeout=30.0)
            c = res_f.counts["rewrite"]
            injected = control(url, "/_stats")["faults"]
            lost = a.requests - c["done"]
            rows.append(["10% faults", a.requests, c["done"], lost, res_f.usage["requests"], c["hedges"], dt_f])
            control(url, "/_config", {"fault_rate": 0.0})
            bounds.append(a.requests / bare_client(url, a.requests, a.concurrency, typed=False))
            dt_typed = bare_client(url, a.requests, a.concurrency, typed=True)
    finally:
        proc.kill()
        proc.wait()

    bound = max(bounds)
    rows.append(["bare client: typed create() on httpx", a.requests, a.requests, 0, a.requests, 0, dt_typed])
    head = ("| run | items | done | lost | HTTP requests | hedges | seconds | done/s | of measured bound | target |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    targets = {"no faults": 0.9, "10% faults": 0.8}
    lines = [head]
    ok = True
    for name, items, done, lost_n, reqs, hedges, secs in rows:
        ratio = done / secs / bound
        target = targets.get(name)
        if target is not None:
            ok &= ratio >= target and lost_n == 0
        mark = "" if target is None else f">= {target} {'met' if ratio >= target and lost_n == 0 else 'MISSED'}"
        lines.append(f"| {name} | {items} | {done} | {lost_n} | {reqs} | {hedges} | {secs:.2f} | {done / secs:.0f} "
                     f"| {ratio:.3f} | {mark} |")
    table = "\n".join(lines)
    bound_line = (f"Measured bound: the bare client (`post()` on aiohttp, no cache/operator) at concurrency "
                  f"{a.concurrency}: {', '.join(f'{b:.0f}' for b in bounds)} requests/s before/after; the higher, "
                  f"{bound:.0f}/s, is the denominator ({bound / theory:.3f} of the theoretical concurrency / latency "
                  f"= {theory:.0f}/s).")
    cached_line = (f"Fully cached re-run of the no-fault run: {dt_cached:.2f} s, {dt_cached / rows[0][6]:.3f} of the "
                   f"first run's time, 0 requests.")
    notes = (f"Faults injected in the 10% run: {', '.join(f'{k} {v}' for k, v in sorted(injected.items()))}; "
             f"{c['retries']} retries, {c['hedges']} hedges, {c['failed']} items failed. A 429 delays only its own "
             f"request (Retry-After 0.1 s; no worker pause, since the fake server does not say the key is spent); "
             f"an item sleeping before a retry gives its worker slot up; an attempt past the hedge point (from the "
             f"latency of finished attempts) gets a copy that takes the next free slot ahead of the queue; one "
             f"whose copies go quiet too is cut at its deadline (4x the hedge point), not at the 30 s timeout.")
    print(table)
    print(bound_line)
    print(cached_line)
    print(notes)
    if not a.no_write:
        section = (f"## augment\n\n`.venv/bin/python benchmarks/augment.py --requests {a.requests} --concurrency "
                   f"{a.concurrency} --latency {a.latency}` — loopback fake OpenAI server in its own process, fixed "
                   f"{a.latency * 1000:.0f} ms latency; one `rewrite` request per item through the public "
                   f"`run_augment` (cache, pacing, hedging, retries, SQLite write per response). Measured on the "
                   f"shared 2-core dev machine (other jobs running).\n\n{table}\n\n{bound_line}\n\n{cached_line}"
                   f"\n\n{notes}\n")
        write_section(HERE / "RESULTS.md", "augment", section)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
