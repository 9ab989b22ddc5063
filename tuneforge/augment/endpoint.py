"""Which OpenAI-compatible endpoint a run talks to, and the embedded fallback.

Precedence: `--llm-base-url`/`--llm-model` on the CLI, the recipe's `llm`, the openai client's own
`OPENAI_BASE_URL`/`OPENAI_API_KEY`, and last the embedded SmolLM2 served on 127.0.0.1 by our own small
OpenAI-compatible server (`local_server.py`: transformers plus grammar-constrained JSON; `transformers serve`
rejects `response_format`), started only when a request actually has to be sent, stopped at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tuneforge.augment.config import LLMConfig
from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.home import tuneforge_home

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
EMBEDDED_PREFIX = "embedded:"
EMBEDDED_DEFAULT = "smollm2"
EMBEDDED_ENDPOINT = "embedded:local-server"
# The embedded server's presence penalty for requests that set none: SmolLM2-135M copies its question into its
# answer without one. question_from_passage over 30 passages, no repairs: 26-27 done at 0, 28 at 1.0, 30 at 2.0.
EMBEDDED_PRESENCE_PENALTY = 2.0


@dataclass
class EndpointSpec:
    base_url: str | None  # None until the embedded server is up
    model: str | None  # the name sent in requests (None: ask the endpoint's /models)
    label: str | None  # the name in cache keys, meta and the manifest
    api_key: str
    public_url: str  # base_url without credentials, for the manifest
    embedded: str | None = None  # embedded model name when no endpoint was configured


def public_url(url: str) -> str:
    """The URL without user:password and without a query string (some gateways put keys there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def resolve_endpoint(llm: LLMConfig, cli_base_url: str | None = None, cli_model: str | None = None,
                     env: dict | None = None) -> EndpointSpec:
    env = os.environ if env is None else env
    base_url = cli_base_url or llm.base_url or env.get("OPENAI_BASE_URL") or None
    model = cli_model or llm.model
    api_key = env.get(llm.api_key_env) or env.get("OPENAI_API_KEY") or ""
    if base_url is None and (model is None or model.startswith(EMBEDDED_PREFIX)):
        name = model[len(EMBEDDED_PREFIX):] if model else EMBEDDED_DEFAULT
        return EndpointSpec(None, None, f"{EMBEDDED_PREFIX}{name}", "EMPTY", EMBEDDED_ENDPOINT, embedded=name)
    if base_url is None:
        base_url = OPENAI_DEFAULT_URL
    if not api_key:
        if urlsplit(base_url).hostname == "api.openai.com":
            raise RecipeError(f"augment.llm: the endpoint {base_url} needs an API key in ${llm.api_key_env}")
        api_key = "EMPTY"  # local servers (vLLM, Ollama, ours) accept any key
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RecipeError(f"augment.llm.base_url: {public_url(base_url)!r} is not an http(s) URL")
    return EndpointSpec(base_url, model, model, api_key, public_url(base_url))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """`tuneforge.augment.local_server` with the converted embedded model, on a free loopback port.
    It honours `response_format` (json_schema, json_object) by grammar-constrained decoding."""

    structured_output = "json_schema"  # what it supports: no probe needed

    def __init__(self, name: str, max_batch: int = 8, presence_penalty: float = EMBEDDED_PRESENCE_PENALTY) -> None:
        self.name = name
        self.max_batch = max_batch
        self.presence_penalty = presence_penalty
        self.proc: subprocess.Popen | None = None
        self.log_path = tuneforge_home() / "augment" / "local-server.log"

    async def start(self, wait_s: float = 300.0) -> tuple[str, str]:
        """Start and wait for /health; returns (base_url, model name to send)."""
        from tuneforge.common.extras import require
        from tuneforge.common.models import embedded_path

        require("augmentation on the embedded model (no endpoint set: --llm-base-url or OPENAI_BASE_URL)",
                "embedded")
        path = str(await asyncio.to_thread(embedded_path, self.name))
        port = _free_port()
        cmd = [sys.executable, "-m", "tuneforge.augment.local_server", path, "--host", "127.0.0.1",
               "--port", str(port), "--name", f"{EMBEDDED_PREFIX}{self.name}", "--max-batch", str(self.max_batch),
               "--presence-penalty", str(self.presence_penalty),
               "--log-level", "warning"]
        env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
        repo = str(Path(__file__).resolve().parents[2])  # so `-m tuneforge...` finds this checkout
        env["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [env.get("PYTHONPATH")])])
        # A small model on a busy CPU: more threads than half the cores made a request 6x slower here.
        env.setdefault("OMP_NUM_THREADS", str(max(1, min(4, (os.cpu_count() or 2) // 2))))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=_die_with_parent)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TuneforgeError(f"the embedded server exited with code {self.proc.returncode} before it was "
                                     f"ready; its log: {self.log_path}\n{self._tail()}")
            if await asyncio.to_thread(_healthy, url):
                return f"{url}/v1", path
            await asyncio.sleep(0.5)
        self.stop()
        raise TuneforgeError(f"the embedded server did not become healthy in {wait_s:.0f}s; log: {self.log_path}")

    def _tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return Path(self.log_path).read_text(errors="replace")[-n:]
        return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if tuneforge dies (kill -9 included), so no orphan keeps the port."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
