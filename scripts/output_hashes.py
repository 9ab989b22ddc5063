"""The sha256 of every published file of the builds a refactor must not change.

The 30k-record benchmark build (`benchmarks/build.py`'s corpus and recipe: plain, near-dup, and plain on the
serial runner), every shipped recipe without augment, and the hotel and law recipes with augment through the
deterministic loopback fake endpoint (`tests/fake_openai_server.py`). The manifest holds source paths, so the
builds run under fixed paths in /tmp (a lock serialises runs) with a fresh TUNEFORGE_HOME (augment's cache):
two runs of one tree give the same file.

    .venv/bin/python scripts/output_hashes.py REPO OUT.json
    .venv/bin/python scripts/output_hashes.py --compare BEFORE.json AFTER.json

Made for #33 (the redesign): benchmarks/results/output-bytes-33.json holds the figures before (91e2eed) and
after it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

WORK, HOME, LOCK, PORT = Path("/tmp/refhash-work"), Path("/tmp/refhash-home"), "/tmp/refhash.lock", 18431
SHIPPED = ("hotel", "law", "self_cognition", "zh_instruct")


def published(out: Path) -> dict[str, str]:
    """Every file of the build's current version, by path, with its sha256."""
    root = (out / ".tuneforge" / "current").resolve()
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def hashes(repo: Path) -> dict[str, dict[str, str]]:
    sys.path[:0] = [str(repo / "benchmarks"), str(repo / "tests")]
    from fake_openai_server import FakeOpenAIServer  # tests/fake_openai_server.py

    from build import make_corpus, recipe  # benchmarks/build.py

    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir()
    (HOME / "models").symlink_to(repo / ".pytest_cache" / "tuneforge-home" / "models")  # the card's tokenizer
    env = {**os.environ, "PYTHONPATH": str(repo), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "HF_HUB_OFFLINE": "1", "TUNEFORGE_HOME": str(HOME)}

    def build(rec: Path, out: Path, *extra: str) -> dict[str, str]:
        r = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-m", "tuneforge.cli", "build", str(rec),
                            "--out", str(out), "--no-prefect", *extra], env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"build {rec} exited {r.returncode}:\n{r.stderr[-3000:]}")
        return published(out)

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    shared = repo.parent / "shared" / "corpora"
    res: dict[str, dict[str, str]] = {}
    plain, near = WORK / "c30k.jsonl", WORK / "n30k.jsonl"
    make_corpus(shared, 30_000, plain)
    make_corpus(shared, 30_000, near, planted=0.01)
    res["30k-plain"] = build(recipe(WORK, plain, False), WORK / "o1")
    res["30k-near"] = build(recipe(WORK, near, True), WORK / "o2")
    res["30k-plain-serial"] = build(recipe(WORK, plain, False), WORK / "o3", "--runner", "serial")
    for name in SHIPPED:
        d = WORK / "ds" / name
        shutil.copytree(repo / "datasets" / name, d)
        r = yaml.safe_load((d / "recipe.yaml").read_text(encoding="utf-8"))
        augmented = r.pop("augment", None) is not None
        (d / "noaug.yaml").write_text(yaml.safe_dump(r, allow_unicode=True), encoding="utf-8")
        res[f"{name}-noaug"] = build(d / "noaug.yaml", WORK / f"out-{name}")
        if augmented:
            srv = FakeOpenAIServer(port=PORT).start()
            try:
                res[f"{name}-augment-fake"] = build(d / "recipe.yaml", WORK / f"aug-{name}", "--llm-base-url",
                                                    f"http://127.0.0.1:{PORT}/v1", "--llm-model", "fake")
            finally:
                srv.stop()
            shutil.rmtree(HOME / "augment", ignore_errors=True)
    return res


def compare(a: dict, b: dict) -> list[str]:
    return [f"{k}/{f}" for k in sorted(a.keys() | b.keys()) for f in sorted(a.get(k, {}).keys() | b.get(k, {}).keys())
            if a.get(k, {}).get(f) != b.get(k, {}).get(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs=2, type=Path, help="REPO OUT.json, or with --compare BEFORE.json AFTER.json")
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    if args.compare:
        diff = compare(*(json.loads(p.read_text()) for p in args.paths))
        print("\n".join(f"differs: {d}" for d in diff) or "identical")
        sys.exit(1 if diff else 0)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # fixed paths: one run at a time
        res = hashes(args.paths[0].resolve())
    args.paths[1].write_text(json.dumps(res, indent=1, sort_keys=True))
    print({k: len(v) for k, v in res.items()})


if __name__ == "__main__":
    main()
