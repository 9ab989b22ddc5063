"""Loading the base model, tokenizer (with the training template) and the LoRA/QLoRA setup for a run."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.models import resolve_model
from tuneforge.trainers.config import TrainConfig

logger = logging.getLogger(__name__)


def load_tokenizer_and_template(config: TrainConfig, name: str) -> tuple[Any, Any]:
    """The base tokenizer carrying our template, so TRL's own chat formatting and the saved model agree."""
    from transformers import AutoTokenizer

    from tuneforge.templates import get_template

    tok = AutoTokenizer.from_pretrained(resolve_model(config.base_model), trust_remote_code=config.trust_remote_code)
    template = get_template(name, tokenizer=tok)
    missing = template.missing_special_tokens(tok)
    if missing:  # still trains correctly (masks come from character offsets); the markers cost several tokens
        logger.warning("template %s: %s not single tokens in %s's vocabulary; they are learned as plain text",
                       name, ", ".join(missing), config.base_model)
    tok.chat_template = template.to_hf_chat_template()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, template


def device_dtype() -> tuple[Any, bool]:
    """bf16 on a GPU that has it, float32 elsewhere; and whether bf16 is on."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16, True
    return torch.float32, False


def quantization_config(config: TrainConfig) -> Any:
    if not config.qlora:
        return None
    import torch

    if not torch.cuda.is_available():
        raise TuneforgeError("QLoRA (peft.qlora: true) needs a CUDA GPU; none is visible. Set qlora: false.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TuneforgeError("QLoRA (peft.qlora: true) needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    dtype, _ = device_dtype()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def _device_map(quant: Any) -> Any:
    if quant is None:
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def padding_free(config: TrainConfig) -> bool:
    """Whether TRL will flatten this run's batches into one row with restarting position_ids."""
    args = config.args
    packed_bfd = args.get("packing") and args.get("packing_strategy", "bfd") in ("bfd", "bfd_split")
    return config.stage == "sft" and bool(args.get("padding_free") or packed_bfd)


def attn_implementation(config: TrainConfig) -> str | None:
    """The config's choice; unset, `varlen` for padding-free sft on a CUDA GPU, where SDPA's block mask is ~4x slower."""
    import torch

    name = config.attn_implementation
    if name is None and padding_free(config) and torch.cuda.is_available():
        name = "varlen"
        logger.info("packed/padding-free batches on CUDA: attn_implementation varlen (set it to override)")
    if name == "varlen":  # ours: PyTorch's FlashAttention varlen kernel, registered with transformers
        from tuneforge.trainers.attention import register

        register()
    return name


def _attn(config: TrainConfig) -> dict[str, Any]:
    name = attn_implementation(config)
    return {"attn_implementation": name} if name else {}


def load_policy(config: TrainConfig, ref: str | None = None) -> Any:
    """The causal LM to train (4-bit when QLoRA), in the run's dtype."""
    from transformers import AutoModelForCausalLM

    quant = quantization_config(config)
    dtype, _ = device_dtype()
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(ref or config.base_model), dtype=dtype, quantization_config=quant,
        device_map=_device_map(quant), trust_remote_code=config.trust_remote_code,
        **_attn(config))
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


def load_scorer(ref: str, config: TrainConfig, tokenizer: Any, train_head: bool = True) -> Any:
    """A one-logit sequence classifier: a fresh head on the base (rm), or a trained `rm` run (adapter or full)."""
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification

    dtype, _ = device_dtype()
    path = Path(resolve_model(ref))
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, trust_remote_code=config.trust_remote_code).merge_and_unload()
    else:
        quant = quantization_config(config) if train_head else None
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, quantization_config=quant, device_map=_device_map(quant),
            trust_remote_code=config.trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def total_steps(args: Any, n_rows: int) -> int:
    """Optimizer steps a Trainer run will make (what AdaLoRA's rank schedule is laid out over)."""
    import math

    from accelerate import PartialState

    if getattr(args, "max_steps", -1) and args.max_steps > 0:
        return int(args.max_steps)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * PartialState().num_processes
    return max(1, math.ceil(n_rows / per_step) * math.ceil(args.num_train_epochs))


def peft_config(config: TrainConfig, task_type: str = "CAUSAL_LM", model: Any = None,
                steps: int | None = None) -> Any:
    """PEFT's config object for the run's `peft` block (None for full fine-tuning)."""
    if config.peft is None:
        return None
    from tuneforge.trainers.peft_methods import peft_config as build

    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    ctx = {"model_path": resolve_model(config.base_model), "hidden_size": hidden, "total_steps": steps}
    return build(config.peft, task_type, ctx)


def peft_callbacks(config: TrainConfig) -> list[Any]:
    """Trainer callbacks a PEFT method needs: AdaLoRA reallocates its rank budget after every optimizer step."""
    if config.peft is None or config.peft.method != "adalora":
        return []
    from transformers import TrainerCallback

    class AdaLoraBudget(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            inner = getattr(model, "module", model)  # DDP
            base = getattr(inner, "base_model", None)
            if base is not None and hasattr(base, "update_and_allocate"):
                base.update_and_allocate(state.global_step)

    return [AdaLoraBudget()]
