"""Batched per-example gradients (attribute/per_example.py) against one backward a record, on a tiny random
Llama with PEFT adapters: the batched path must give each record its own gradient whatever the padding."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from tuneforge.attribute import gradients as gr  # noqa: E402
from tuneforge.attribute import per_example  # noqa: E402
from tuneforge.attribute.inputs import TrainRecord  # noqa: E402
from tuneforge.attribute.per_example import batch_size_for, linear_owners, project_records  # noqa: E402


def _model(peft_config):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    m = transformers.LlamaForCausalLM(cfg)
    m = peft.get_peft_model(m, peft_config)
    m.eval()
    return m


def _records(n: int) -> list[TrainRecord]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        length = 3 + (i * 7) % 17  # lengths vary, so batches are padded
        ids = torch.randint(1, 97, (length,), generator=g).tolist()
        start = length // 3  # the prompt part is not trained on
        labels = [-100] * start + ids[start:]
        if i % 5 == 0:  # a trained span in the middle, masked tokens after it
            labels = [-100] * start + ids[start:length - 1] + [-100]
        out.append(TrainRecord(i, f"r{i}", {}, "", ids, labels))
    return out


@pytest.mark.parametrize("bias", ["none", "lora_only"])
def test_batched_equals_one_backward_a_record(bias) -> None:
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, init_lora_weights=False, bias=bias,
                          target_modules=["q_proj", "v_proj", "down_proj", "lm_head"])
    model = _model(cfg)
    recs = _records(11)
    owners = linear_owners(model)
    assert owners is not None
    ident = lambda x: x  # noqa: E731  (no projection: compare the gradients themselves)
    loop = gr.project_batches(recs, gr.train_loss(model, "cpu"), model, ident, batch=4)
    batched = project_records(recs, model, owners, ident, "cpu", batch=4)
    assert batched.shape == loop.shape and loop.abs().sum() > 0
    assert torch.allclose(batched, loop, rtol=1e-4, atol=1e-6), (batched - loop).abs().max()
    # another batch size, another padding: the same gradients
    assert torch.allclose(project_records(recs, model, owners, ident, "cpu", batch=3), batched, rtol=1e-4, atol=1e-6)


def test_batches_respect_the_token_budget(monkeypatch) -> None:
    lengths = [5, 9, 9, 20, 3]
    order = sorted(range(5), key=lambda i: lengths[i])
    got = per_example._batches(order, lengths, size=3, tokens=20)
    assert sorted(i for b in got for i in b) == list(range(5))
    assert all((len(b) <= 3 and len(b) * max(lengths[i] for i in b) <= 20) or len(b) == 1 for b in got)
    assert got == [[4, 0], [1, 2], [3]]
    model = _model(peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    monkeypatch.setattr(per_example, "ACTIVATION_BYTES_CPU", per_example.bytes_per_token(model) * 12)
    assert per_example.token_budget(model, "cpu") == 12
    recs = _records(7)
    owners = linear_owners(model)
    ident = lambda x: x  # noqa: E731
    small = project_records(recs, model, owners, ident, "cpu", batch=32)  # 12 tokens a batch: mostly one record
    assert torch.allclose(small, gr.project_batches(recs, gr.train_loss(model, "cpu"), model, ident), rtol=1e-4,
                          atol=1e-6)


def test_other_adapters_keep_the_loop() -> None:
    """IA3's vectors, DoRA's magnitudes and the prompt and prefix encoders are not linear layers' tensors: the
    loop takes their gradients (finite, non-zero, one row a record; prompt tuning's virtual positions dropped)."""
    recs = _records(4)
    ident = lambda x: x  # noqa: E731
    for cfg in (peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
                peft.LoraConfig(r=4, use_dora=True, target_modules=["q_proj"], init_lora_weights=False),
                peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
                peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)):
        model = _model(cfg)
        assert linear_owners(model) is None
        g = gr.project_batches(recs, gr.train_loss(model, "cpu"), model, ident)
        assert g.shape == (4, sum(p.numel() for p in gr.trainable(model)))
        assert torch.isfinite(g).all() and (g.abs().sum(1) > 0).all()


def test_batch_follows_the_memory_budget() -> None:
    assert batch_size_for(10, "cpu", 32) == 32
    assert batch_size_for(1 << 28, "cpu", 32) == 1
    assert batch_size_for(1 << 24, "cuda:0", 64) == 64


def test_batched_lost_questions_equal_one_backward_each(tiny, shared) -> None:
    """The lost questions' gradients (minus the log-likelihood of the base's answer among the option letters at
    the prompt's last token), batched over prompts of different lengths, against one backward each: real C-Eval
    prompts, SmolLM2's tokenizer, a tiny random Llama with a LoRA on it."""
    from tuneforge.attribute.inputs import LostQuestion
    from tuneforge.attribute.per_example import project_lost
    from tuneforge.common.models import load_tokenizer
    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.suites import load_suite

    tok = load_tokenizer(str(tiny))
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                      init_lora_weights=False))
    model.eval()
    suite = load_suite(f"ceval:{shared / 'ceval'}", subjects=["law"])
    eng = NativeEngine(base, tok, "cpu")
    items = suite.items("law", 5)
    shots = suite.shots("law", 1)
    lost = [LostQuestion("ceval", it.uid, "law", it.answer, "A", eng.prompt(suite, "law", shots[: i % 2], it),
                         tuple(it.letters), suite.style.answer_sep) for i, it in enumerate(items)]
    assert len({len(q.prompt) for q in lost}) > 1  # 0- and 1-shot prompts: the batch is padded
    ident = lambda x: x  # noqa: E731
    loop = gr.project_batches(lost, gr.lost_loss(model, tok, "cpu"), model, ident)
    batched = project_lost(lost, model, linear_owners(model), tok, ident, "cpu", batch=3)
    assert loop.abs().sum() > 0
    # float32 sums over prompts of a few hundred tokens in another order: each row equal to 1e-5 of its norm
    rel = (batched - loop).norm(dim=1) / loop.norm(dim=1)
    assert rel.max() < 1e-5, rel
