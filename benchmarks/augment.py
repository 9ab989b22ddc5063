"""Augmentation throughput against the loopback fault-injection server (tests/fake_openai_server.py).

    .venv/bin/python benchmarks/augment.py [--requests 2000] [--concurrency 64] [--latency 0.1]

The server runs in its own process with a fixed latency; `run_augment` sends one `rewrite` request per
record through the real path (cache lookup, pacing, in-flight window, retries, SQLite write per response).
Figures, each against a baseline measured in the same run:
- achieved requests/s as a fraction of the bound concurrency/latency (target >= 0.9);
- the same with 10% faults (429 with Retry-After, 500, dropped connections, truncated bodies, hangs past a
  1 s timeout), counting only completed items;
- a fully cached re-run, as a fraction of the first run's time;
- for context, the openai client alone at the same window (no cache, no operator): `post()` on the aiohttp
  transport (what tuneforge uses) and the typed `chat.completions.create()` on the default httpx transport.
Writes the `## augment` section of benchmarks/RESULTS.md.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    os.environ.pop("OPENAI_BASE_URL", None)
    bound = a.concurrency / a.latency
    proc, url = start_server(a.latency)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache.sqlite"
            # warm-up (imports, connection pool), not measured
            run(records(100, "warm"), url, Path(tmp) / "warm.sqlite", a.concurrency)

            recs = records(a.requests, "clean")
            dt, res = run(recs, url, cache, a.concurrency)
            done = res.counts["rewrite"]["done"]
            rows.append(("no faults", a.requests, done, res.usage["requests"], dt, done / dt, done / dt / bound))

            dt_cached, res_c = run(recs, url, cache, a.concurrency)
            assert res_c.usage["requests"] == 0, res_c.usage

            control(url, "/_config", {"fault_rate": 0.1, "faults": ["429", "500", "drop", "truncated", "hang"],
                                      "retry_after": 0.1})
            recs_f = records(a.requests, "faults")
            dt_f, res_f = run(recs_f, url, cache, a.concurrency, timeout=1.0)
            c = res_f.counts["rewrite"]
            injected = control(url, "/_stats")["faults"]
            rows.append(("10% faults", a.requests, c["done"], res_f.usage["requests"], dt_f, c["done"] / dt_f,
                         c["done"] / dt_f / bound))
            control(url, "/_config", {"fault_rate": 0.0})
            for label, typed in (("bare client: post() on aiohttp, no cache/operator", False),
                                 ("bare client: typed create() on httpx", True)):
                dt_b = bare_client(url, a.requests, a.concurrency, typed)
                rows.append((label, a.requests, a.requests, a.requests, dt_b, a.requests / dt_b,
                             a.requests / dt_b / bound))
    finally:
        proc.kill()
        proc.wait()

    head = "| run | items | done | HTTP requests | seconds | done/s | fraction of bound |\n|---|---|---|---|---|---|---|"
    lines = [head] + [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.0f} | {r[6]:.3f} |" for r in rows]
    cached_line = (f"Fully cached re-run of the no-fault run: {dt_cached:.2f} s, {dt_cached / rows[0][4]:.3f} of the "
                   f"first run's time, 0 requests.")
    table = "\n".join(lines)
    print(table)
    print(cached_line)
    fail = res_f.counts["rewrite"]
    notes = (f"`run_augment` reached {rows[0][5] / rows[2][5]:.2f} of the bare client's rate in the same run (the bare "
             f"client itself is the ceiling on this machine). Faults injected in the 10% run: "
             f"{', '.join(f'{k} {v}' for k, v in sorted(injected.items()))}; {fail['retries']} retries, "
             f"{fail['failed']} items failed. Each 429 pauses every worker for its Retry-After (0.1 s) and each hang "
             f"holds a slot for the 1 s timeout, which is where the faulted run's time goes.")
    print(notes)
    if not a.no_write:
        section = (f"## augment\n\n`.venv/bin/python benchmarks/augment.py --requests {a.requests} --concurrency "
                   f"{a.concurrency} --latency {a.latency}` — loopback fake OpenAI server in its own process, fixed "
                   f"{a.latency * 1000:.0f} ms latency; bound = concurrency / latency = {bound:.0f} requests/s; one "
                   f"`rewrite` request per item through `run_augment` (cache, pacing, retries, SQLite write per "
                   f"response). Measured on the shared 2-core dev machine (other jobs running).\n\n"
                   f"{table}\n\n{cached_line}\n\n{notes}\n")
        write_section(HERE / "RESULTS.md", "augment", section)


if __name__ == "__main__":
    main()
