"""PEFT methods: one table from the config's `peft.method` to its pydantic settings and PEFT's config class.

Every method's settings are validated here (unknown keys are errors naming the method) and translated into
the keyword arguments of PEFT's own config class, so the saved adapter is a plain PEFT adapter that loads with
`peft.AutoPeftModelForCausalLM.from_pretrained`.

`python -m tuneforge.trainers.peft_methods [MODEL]` prints each method's trainable parameter count on a model
(default: the embedded SmolLM2), with the defaults below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str

    def peft_kwargs(self, ctx: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


class _Targets(_Spec):
    @field_validator("target_modules", check_fields=False)
    @classmethod
    def _targets(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("target_modules must name at least one module, or be 'all-linear'")
        return v


class _LoraFamily(_Targets):
    qlora: bool = False  # load the base in 4-bit NF4 (CUDA + bitsandbytes) and train the adapter on top


class LoraSpec(_LoraFamily):
    """LoRA; `qlora: true` loads the base model in 4-bit NF4 (CUDA + bitsandbytes)."""

    method: Literal["lora"] = "lora"
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False

    def peft_kwargs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": self.target_modules, "use_rslora": self.use_rslora, "bias": "none"}


class DoraSpec(LoraSpec):
    """DoRA: LoRA on the direction of each weight plus a trained magnitude vector (PEFT `use_dora`)."""

    method: Literal["dora"] = "dora"

    def peft_kwargs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {**super().peft_kwargs(ctx), "use_dora": True}


class AdaLoraSpec(_LoraFamily):
    """AdaLoRA: LoRA whose ranks start at `init_r` and are pruned to an average `target_r` during training.

    The rank budget follows the run's optimizer steps: `total_step` defaults to the run's own step count, and
    tuneforge calls PEFT's `update_and_allocate` after every optimizer step."""

    method: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1)
    target_r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    tinit: int = Field(0, ge=0)  # steps before any rank is pruned
    tfinal: int = Field(0, ge=0)  # steps at the end with the final ranks fixed
    delta_t: int = Field(1, ge=1)  # steps between two budget allocations
    beta1: float = Field(0.85, gt=0.0, lt=1.0)
    beta2: float = Field(0.85, gt=0.0, lt=1.0)
    orth_reg_weight: float = Field(0.5, ge=0.0)
    total_step: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ranks(self) -> AdaLoraSpec:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        if self.total_step is not None and self.tinit >= self.total_step - self.tfinal:
            raise ValueError(f"tinit ({self.tinit}) must be below total_step - tfinal "
                             f"({self.total_step} - {self.tfinal}): no steps are left to prune ranks")
        return self

    def peft_kwargs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        total = self.total_step or ctx.get("total_steps")
        if not total:
            raise ValueError("adalora needs the run's step count: set peft.total_step or args.max_steps")
        if self.tinit >= total - self.tfinal:
            raise ValueError(f"adalora: tinit ({self.tinit}) must be below total_step - tfinal ({total} - "
                             f"{self.tfinal}); lower tinit/tfinal or train longer")
        return {"init_r": self.init_r, "target_r": self.target_r, "lora_alpha": self.alpha,
                "lora_dropout": self.dropout, "target_modules": self.target_modules, "tinit": self.tinit,
                "tfinal": self.tfinal, "deltaT": self.delta_t, "beta1": self.beta1, "beta2": self.beta2,
                "orth_reg_weight": self.orth_reg_weight, "total_step": int(total), "bias": "none"}


class IA3Spec(_Targets):
    """(IA)^3: learned vectors rescaling keys, values and the feed-forward input (PEFT's per-architecture
    defaults when `target_modules` is unset); `feedforward_modules` must be a subset of `target_modules`."""

    method: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None

    @model_validator(mode="after")
    def _subset(self) -> IA3Spec:
        if self.feedforward_modules is not None and self.target_modules is None:
            raise ValueError("feedforward_modules needs target_modules (it must be a subset of them)")
        if self.feedforward_modules and not set(self.feedforward_modules) <= set(self.target_modules):
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            raise ValueError(f"feedforward_modules {extra} not in target_modules")
        return self

    def peft_kwargs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.target_modules is not None:
            out["target_modules"] = self.target_modules
            out["feedforward_modules"] = self.feedforward_modules or []
        return out


class _Virtual(_Spec):
    num_virtual_tokens: int = Field(20, ge=1, le=512)


class PrefixSpec(_Virtual):
    """Prefix tuning in the P-Tuning v2 style: trained key/value prefixes at every layer; `prefix_projection`
    reparameterises them through a two-layer MLP (`encoder_hidden_size` wide) while training."""

    method: Literal["prefix"] = "prefix"
    prefix_projection: bool = False
    encoder_hidden_size: int | None = Field(None, ge=1)  # default: the model's hidden size

    @model_validator(mode="after")
    def _projection(self) -> PrefixSpec:
        if self.encoder_hidden_size is not None and not self.prefix_projection:
            raise ValueError("encoder_hidden_size only applies with prefix_projection: true")
        return self

    def peft_kwargs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"num_virtual_tokens": self.num_virtual_tokens,
                               "prefix_projection": self.prefix_projection}
        if self.prefix_projection:
            out["encoder_hidden_size"] = self.encoder_hidden_size or ctx["hidden_size"]
        return out


class PromptSpec(_Virtual):
    """Prompt tuning: trained soft-prompt embeddings before the input; `init: text` starts them from the
    embeddings of `init_text` (tokenized with the base model's tokenizer)."""

    method: Literal["prompt"] = "prompt"
    init: Literal["random", "text"] = "random"
    init_text: str | None = None

    @model_validator(mode="after")
    def _text(self) -> PromptSpec:
        if (self.init == "text") != bool(self.init_text):
            raise ValueError("init: text needs init_text, and init_text needs init: text")
        return self

    def peft_kwargs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"num_virtual_tokens": self.num_virtual_tokens, "prompt_tuning_init": self.init.upper()}
        if self.init == "text":
            out.update(prompt_tuning_init_text=self.init_text, tokenizer_name_or_path=ctx["model_path"])
        return out


class PTuningSpec(_Virtual):
    """P-Tuning: virtual-token embeddings produced by a small MLP or LSTM prompt encoder."""

    method: Literal["p_tuning"] = "p_tuning"
    encoder_type: Literal["MLP", "LSTM"] = "MLP"
    encoder_hidden_size: int = Field(128, ge=1)
    encoder_num_layers: int = Field(2, ge=1)
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    def peft_kwargs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"num_virtual_tokens": self.num_virtual_tokens, "encoder_reparameterization_type": self.encoder_type,
                "encoder_hidden_size": self.encoder_hidden_size, "encoder_num_layers": self.encoder_num_layers,
                "encoder_dropout": self.encoder_dropout}


@dataclass(frozen=True)
class Method:
    spec: type[_Spec]
    peft_class: str  # the class in `peft`
    merges: bool  # `merge_and_unload` folds it into the base weights (`--merge`)
    # trains with activation (gradient) checkpointing, TRL's default: prefix tuning's per-layer key/value prefixes
    # do not survive the recomputed forward pass (attention mask and cache lengths disagree)
    checkpointing: bool = True


METHODS: dict[str, Method] = {
    "lora": Method(LoraSpec, "LoraConfig", merges=True),
    "dora": Method(DoraSpec, "LoraConfig", merges=True),
    "adalora": Method(AdaLoraSpec, "AdaLoraConfig", merges=True),
    "ia3": Method(IA3Spec, "IA3Config", merges=True),
    "prefix": Method(PrefixSpec, "PrefixTuningConfig", merges=False, checkpointing=False),
    "prompt": Method(PromptSpec, "PromptTuningConfig", merges=False),
    "p_tuning": Method(PTuningSpec, "PromptEncoderConfig", merges=False),
}
DEFAULT_METHOD = "lora"


def parse_spec(raw: Any, key: str = "peft") -> _Spec | None:
    """A `peft:` block (mapping, `false`/`null` for full fine-tuning, `true` for LoRA defaults) as its spec.
    Errors name the key and the method: `peft.bogus: unknown key for method 'prefix' (its keys: ...)`."""
    from pydantic import ValidationError

    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if isinstance(raw, _Spec):
        return raw
    if not isinstance(raw, dict):
        raise ValueError("must be a mapping with `method` (or false for full fine-tuning)")
    method = raw.get("method", DEFAULT_METHOD)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    entry = METHODS[method]
    try:
        spec = entry.spec.model_validate({**raw, "method": method})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                known = ", ".join(k for k in entry.spec.model_fields if k != "method")
                lines.append(f"{key}.{field}: unknown key for method {method!r} (its keys: {known})")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                lines.append(f"{key}.{field} (method {method!r}): {msg}" if field else f"{key} (method {method!r}): {msg}")
        raise ValueError("; ".join(lines)) from None
    return spec


def uses_qlora(spec: _Spec | None) -> bool:
    return bool(getattr(spec, "qlora", False))


def peft_config(spec: _Spec, task_type: str, ctx: dict[str, Any]) -> Any:
    """PEFT's config object for a spec; `ctx` carries run facts: model_path, hidden_size, total_steps."""
    import peft

    cls = getattr(peft, METHODS[spec.method].peft_class)
    try:
        return cls(task_type=task_type, **spec.peft_kwargs(ctx))
    except (TypeError, ValueError) as e:
        from tuneforge.common.errors import RecipeError

        raise RecipeError(f"peft method {spec.method!r}: PEFT's {cls.__name__} rejected the settings: {e}") from e


def trainable_parameters(model_path: str, spec: _Spec, task_type: str = "CAUSAL_LM",
                         total_steps: int = 100) -> tuple[int, int]:
    """(trainable, total) parameters of `spec` applied to the model at `model_path` (float32, on CPU)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path)
    ctx = {"model_path": model_path, "hidden_size": model.config.hidden_size, "total_steps": total_steps}
    pm = get_peft_model(model, peft_config(spec, task_type, ctx))
    return pm.get_nb_trainable_parameters()


def main(argv: list[str] | None = None) -> None:
    import sys

    from tuneforge.common.models import resolve_model

    args = sys.argv[1:] if argv is None else argv
    ref = args[0] if args else "embedded:smollm2"
    path = resolve_model(ref)
    print(f"| method | trainable parameters | share of {ref} |\n|---|---:|---:|")
    rows = [(f"`{name}`", entry.spec(method=name)) for name, entry in METHODS.items()]
    rows.append(("`prefix` + `prefix_projection` (512)",
                 PrefixSpec(method="prefix", prefix_projection=True, encoder_hidden_size=512)))
    for label, spec in rows:
        trainable, total = trainable_parameters(path, spec)
        print(f"| {label} | {trainable:,} | {100 * trainable / total:.3f}% |", flush=True)


if __name__ == "__main__":
    main()
