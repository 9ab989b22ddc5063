"""A tiny random Llama with the embedded SmolLM2 tokenizer: engine mechanics on a loaded 2-core CPU in seconds."""

from __future__ import annotations

from pathlib import Path


def tiny_model_dir(smollm2_path: Path, target: Path, *, init: float = 0.4, seed: int = 0) -> Path:
    """Save (once) a 2-layer, 64-wide Llama using SmolLM2's tokenizer and chat template."""
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      initializer_range=init, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target
