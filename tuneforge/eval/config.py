"""The eval config (YAML): which model, which suites, held-out data, perplexity, forgetting thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.common.config import error_lines, read_yaml_mapping
from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.eval.suites import DEFAULT_SHOTS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteConfig(_Strict):
    benchmark: str  # ceval | ceval:PATH | cmmlu:PATH | mmlu:PATH | mcq:FILE | ceval/ceval-exam
    name: str | None = None
    subjects: list[str] | None = None
    shots: int = Field(DEFAULT_SHOTS, ge=0)
    split: str | None = None  # default: val, else test; ceval `test` writes the submission JSON
    limit: int | None = Field(None, ge=1)  # first N questions per subject
    columns: dict[str, str] | None = None  # for mcq files
    style: Literal["ceval", "mmlu"] | None = None
    strict_subjects: bool = True  # False when one --subjects list is shared by several suites
    mode: Literal["logits", "generate"] | None = None  # default: the eval config's `mode`
    cot: bool | None = None  # generate mode: chain-of-thought instruction (default: generation.cot)
    tier: Literal["critical", "supporting", "advisory"] = "critical"  # the forgetting gate's tier


class GenerationConfig(_Strict):
    """`mode: generate`: how MCQ answers are generated (the letter is then read by the extraction cascade)."""

    cot: bool = False  # chain-of-thought instruction ("think step by step, then 'The answer is X'")
    instruction: str | None = None  # replaces the built-in answer-only / CoT instruction
    max_new_tokens: int | None = Field(None, ge=1)  # default 32 answer-only, 512 with CoT
    batch_size: int = Field(16, ge=1)
    stop: list[str] | None = None  # extra stop strings (the chat template's own are always used)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0


class HeldoutConfig(_Strict):
    dataset: str  # a `tuneforge build` output folder (manifest.json) or a saved DatasetDict
    split: str = "test"
    template: str | None = None  # default: the manifest's template, else the tokenizer's own
    limit: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    tokenize: Literal["char", "word"] = "char"
    exact_match_max_chars: int = Field(16, ge=0)
    seed: int = 0


class PerplexityConfig(_Strict):
    corpus: str | None = None  # default: the shipped general-text sample
    limit: int | None = Field(60, ge=1)
    max_length: int = Field(512, ge=2)


class TierConfig(_Strict):
    tolerance: float | None = Field(None, ge=0)  # points a suite of this tier may drop; None: forgetting.tolerance
    gates: bool = True  # False: reported, never fails the gate


def _default_tiers() -> dict[str, TierConfig]:
    return {"critical": TierConfig(), "supporting": TierConfig(tolerance=2.0),
            "advisory": TierConfig(tolerance=5.0, gates=False)}


class ForgettingConfig(_Strict):
    # points of accuracy (the critical tier's, unless tiers.critical says otherwise); below 0 it demands a gain
    tolerance: float = 1.0
    # significance level; above 1 every change is significant (how the tests force a verdict)
    alpha: float = Field(0.05, gt=0)
    power: float = Field(0.8, gt=0, lt=1)  # for the minimum detectable effect at the run's n
    bootstrap: int = Field(10000, ge=1)
    seed: int = 0
    perplexity_tolerance_pct: float = Field(10.0, ge=0)
    tiers: dict[Literal["critical", "supporting", "advisory"], TierConfig] = Field(default_factory=_default_tiers)

    def tier_tolerance(self, tier: str) -> float:
        t = self.tiers.get(tier) or _default_tiers()[tier]  # type: ignore[index]
        return self.tolerance if t.tolerance is None else t.tolerance

    def tier_gates(self, tier: str) -> bool:
        t = self.tiers.get(tier) or _default_tiers()[tier]  # type: ignore[index]
        return t.gates


class JudgeConfig(_Strict):
    """LLM-judge win rate of tuned vs base on held-out generations (the augmentation engine's client)."""

    llm: dict[str, Any] = Field(default_factory=dict)  # an augment `llm:` block: endpoint, model, cache, ...
    cache: str | None = None  # default: the augment response cache ($TUNEFORGE_HOME/augment/cache.sqlite)
    limit: int | None = Field(100, ge=1)
    bootstrap: int = Field(10000, ge=1)
    seed: int = 0
    prompt: str | None = None  # a judge prompt with {question}, {answer_a}, {answer_b}; default built in


class EvalConfig(_Strict):
    model: str | None = None
    adapter: str | None = None
    engine: Literal["native", "lm-eval"] = "native"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = Field(16, ge=1)
    max_batch_tokens: int = Field(8192, ge=1)
    prefix_cache: bool | None = None  # logits mode: reuse each subject's shared prefix (None: auto, see docs)
    # bf16/fp16: re-score in fp32 the questions whose top-two letter logits are closer than this
    # (None: 0.1 on CUDA in half precision, where it gave 100% agreement with fp32 on C-Eval val; 0 disables)
    rescore_margin: float | None = Field(None, ge=0)
    chat: bool = False  # wrap MCQ prompts in the model's chat template (C-Eval's chat mode)
    chat_template: str | None = None
    mode: Literal["logits", "generate"] = "logits"  # MCQ scoring: next-token letter logits, or generate+extract
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    suites: list[SuiteConfig] = Field(default_factory=list)
    heldout: HeldoutConfig | None = None
    perplexity: PerplexityConfig | None = None
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    judge: JudgeConfig | None = None
    samples_in_report: int = Field(20, ge=0)


def resolve_suite_paths(data: dict, base_dir: Path) -> None:
    """`mcq:FILE` (and `NAME:DIR`) suite paths are relative to the config file, not the working directory."""
    from tuneforge.eval.suites import HUB_IDS

    for sc in data.get("suites") or []:
        if not isinstance(sc, dict) or not isinstance(sc.get("benchmark"), str) or sc["benchmark"] in HUB_IDS:
            continue
        name, sep, where = sc["benchmark"].partition(":")
        if not sep or not where.strip() or Path(where.strip()).is_absolute():
            continue
        local = base_dir / where.strip()
        if name.strip().lower() == "mcq" or local.exists():
            sc["benchmark"] = f"{name}:{local.resolve()}"


# Other paths an eval config names (suites' are handled above): a local file or folder each.
PATH_FIELDS = (("heldout", "dataset"), ("perplexity", "corpus"), ("judge", "cache"))


def resolve_paths(data: dict, base_dir: Path) -> None:
    """Relative `heldout.dataset`, `perplexity.corpus` and `judge.cache` resolve against the config's folder."""
    for block, key in PATH_FIELDS:
        sub = data.get(block)
        if isinstance(sub, dict) and isinstance(sub.get(key), str) and sub[key].strip() \
                and not Path(sub[key]).expanduser().is_absolute():
            data[block] = {**sub, key: str((base_dir / Path(sub[key]).expanduser()).resolve())}


def load_config(source: str | Path | dict | EvalConfig | None, *, base_dir: str | Path | None = None,
                **overrides: Any) -> EvalConfig:
    """A YAML path, a dict or a config, with non-None keyword overrides applied on top.

    Relative paths (`mcq:`/folder suites, heldout.dataset, perplexity.corpus, judge.cache) resolve against
    `base_dir`: by default the YAML file's folder (a dict or config is taken as written unless `base_dir` is
    given)."""
    src = source
    if isinstance(src, EvalConfig):
        data = src.model_dump()
    elif isinstance(src, dict):
        data = dict(src)
    elif src is None:
        data = {}
    else:
        data = read_yaml_mapping(src, "eval config")
        base_dir = Path(src).resolve().parent if base_dir is None else base_dir
    data.update({k: v for k, v in overrides.items() if v is not None})
    if base_dir is not None:
        data["suites"] = [dict(sc) if isinstance(sc, dict) else sc for sc in data.get("suites") or []]
        resolve_suite_paths(data, Path(base_dir))
        resolve_paths(data, Path(base_dir))
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as e:
        raise RecipeError("eval config: " + "; ".join(error_lines(e))) from None


def check_suite_paths(cfg: EvalConfig) -> None:
    """Before any model loads: every local suite path exists (a clear message instead of a late failure)."""
    from tuneforge.eval.suites import HUB_IDS

    for i, sc in enumerate(cfg.suites):
        name, sep, where = sc.benchmark.partition(":")
        if not sep or sc.benchmark in HUB_IDS or not where.strip():
            if name.strip().lower() == "mcq":
                raise TuneforgeError(f"suites[{i}]: {sc.benchmark!r} needs a file: mcq:PATH.csv|.jsonl")
            continue
        p = Path(where.strip())
        looks_hub = "/" in where and not where.startswith((".", "/")) and name.strip().lower() != "mcq"
        if not p.exists() and not looks_hub:
            raise TuneforgeError(f"suites[{i}] {sc.benchmark!r}: {p} does not exist (relative paths in a config "
                                 "file are relative to that file's folder)")


def check_paths(cfg: EvalConfig, *, skip: tuple[str, ...] = ()) -> None:
    """Before any model loads: the suites' paths, then the held-out dataset and the perplexity corpus exist
    (`skip` names fields an earlier step produces, e.g. "heldout.dataset" in a pipeline). One error lists
    every missing path."""
    missing = []
    try:
        check_suite_paths(cfg)
    except TuneforgeError as e:
        missing.append(str(e))
    for block, key in PATH_FIELDS[:2]:
        sub = getattr(cfg, block)
        value = getattr(sub, key, None) if sub is not None else None
        if value and f"{block}.{key}" not in skip and not Path(value).exists():
            missing.append(f"{block}.{key}: {value} does not exist")
    if missing:
        raise TuneforgeError("eval config paths (relative paths resolve against the config file's folder): "
                             + "; ".join(missing))


def _looks_local(ref: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, `./`, `~`, or more than one folder deep."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or Path(ref).expanduser().exists()


def check_model_paths(model: str | None, adapter: str | None) -> None:
    """Before any model loads: a local model is a folder, a local adapter a PEFT adapter folder."""
    if model and not model.startswith("embedded:") and _looks_local(model):
        p = Path(model).expanduser()
        if not p.is_dir():
            raise TuneforgeError(f"--model {model}: {'not a model folder' if p.exists() else 'does not exist'}")
    if adapter and _looks_local(adapter):
        p = Path(adapter).expanduser()
        if not p.exists():
            raise TuneforgeError(f"--adapter {adapter}: does not exist (a training run's DIR/final folder)")
        if not (p / "adapter_config.json").is_file():
            raise TuneforgeError(f"--adapter {adapter}: not a PEFT adapter folder (no adapter_config.json); "
                                 "a fully fine-tuned model goes in --model")
