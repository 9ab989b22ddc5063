"""Per-example gradients of a whole batch in one backward pass, for adapters made of linear layers (LoRA).

One backward per record (gradients.py `project_batches`) is exact for any PEFT method but costs a full
forward/backward a record: a GPU spends most of it waiting. When every trainable tensor is the weight or bias of
an `nn.Linear` (LoRA's A and B, and LoRA variants without extra vectors), a record's gradient is a sum over its
tokens of outer products of what the layer saw and the gradient of what it gave out (the Opacus/"ghost" identity):
for a batch padded on the right, `grad_W[b] = sum_t dY[b, t]^T X[b, t]`. Padding tokens come after a record's
last trained token, so under the causal mask they touch neither its loss nor its activations, and the summed
batch loss gives each record exactly its own gradient. The loop stays for the other methods (IA3's vectors,
prompt encoders, DoRA's magnitudes...) and is what the tests check this against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tuneforge.attribute.gradients import IGNORE, lost_inputs, lost_losses, train_losses, trainable

# per-example gradients held at once: batch x adapter weights x 4 bytes stays under this
GRAD_BYTES = {"cpu": 1 << 30, "cuda": 8 << 30}


def linear_owners(model: Any) -> list[tuple[Any, str]] | None:
    """(module, "weight" | "bias") for each trainable tensor in `trainable(model)` order, or None when some
    trainable tensor is not a linear layer's (then only the loop is exact)."""
    import torch

    owner: dict[int, tuple[Any, str]] = {}
    for mod in model.modules():
        if type(mod) is torch.nn.Linear:
            for kind in ("weight", "bias"):
                p = getattr(mod, kind, None)
                if p is not None and p.requires_grad:
                    owner[id(p)] = (mod, kind)
    out = []
    for p in trainable(model):
        if id(p) not in owner:
            return None
        out.append(owner[id(p)])
    return out


# activations kept for the backward pass: a CPU batch stays under this many bytes; CUDA takes half what is free
ACTIVATION_BYTES_CPU = 2 << 30


def bytes_per_token(model: Any) -> int:
    """A rough float32 footprint of one token kept for the backward pass: each layer's saved activations (about
    12 hidden-size and 3 MLP-size vectors) and the logits with their softmax and gradient. It only sizes
    batches; a 24 GiB machine ran out of memory at 32 records x 256 tokens of SmolLM2 without it."""
    cfg = getattr(model, "config", None)
    h = int(getattr(cfg, "hidden_size", 0) or 1024)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * h)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 24)
    vocab = int(getattr(cfg, "vocab_size", 0) or 32000)
    return 4 * (layers * (12 * h + 3 * inter) + 3 * vocab)


def token_budget(model: Any, device: str) -> int:
    """Tokens (padding included) a batch may hold."""
    if str(device).startswith("cuda"):
        import torch

        budget = torch.cuda.mem_get_info(torch.device(device))[0] // 2
    else:
        budget = ACTIVATION_BYTES_CPU
    return max(1, budget // bytes_per_token(model))


def batch_size_for(dim: int, device: str, wanted: int) -> int:
    """Records a batch, so that their gradients (`dim` floats each) fit the device's budget."""
    budget = GRAD_BYTES["cuda" if str(device).startswith("cuda") else "cpu"]
    return max(1, min(wanted, budget // max(1, 4 * dim)))


class _Tape:
    """Forward hooks that keep each hooked layer's inputs and outputs of one forward pass."""

    def __init__(self, modules: Sequence[Any]) -> None:
        self.seen: dict[int, list[tuple[Any, Any]]] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in dict.fromkeys(modules)]

    def _hook(self, mod: Any, args: tuple, out: Any) -> None:
        self.seen.setdefault(id(mod), []).append((args[0], out))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _batch_grads(model: Any, owners: list[tuple[Any, str]], ids: Any, mask: Any,
                 row_losses: Callable[[Any], Any]) -> Any:
    """[B, dim] per-example gradients of the rows' losses (`row_losses(logits)` -> [B])."""
    import torch

    tape = _Tape([m for m, _ in owners])
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        tape.close()
    loss = row_losses(logits).sum()
    calls = [c for m in dict.fromkeys(m for m, _ in owners) for c in tape.seen.get(id(m), [])]
    grads = torch.autograd.grad(loss, [out for _, out in calls], allow_unused=True)
    grad_of = {id(out): g for (_, out), g in zip(calls, grads, strict=True)}
    b, flat = ids.shape[0], []
    for mod, kind in owners:
        acc = None
        for x, out in tape.seen.get(id(mod), []):
            g = grad_of[id(out)]
            if g is None:
                continue
            x3, g3 = x.reshape(b, -1, x.shape[-1]).float(), g.reshape(b, -1, g.shape[-1]).float()
            part = torch.einsum("bto,bti->boi", g3, x3) if kind == "weight" else g3.sum(1)
            acc = part if acc is None else acc + part
        p = getattr(mod, kind)
        flat.append((acc if acc is not None else torch.zeros(b, *p.shape, device=ids.device)).reshape(b, -1))
    return torch.cat(flat, dim=1)


def _batches(order: list[int], lengths: list[int], size: int, tokens: int) -> list[list[int]]:
    """Consecutive runs of the length-sorted `order`: at most `size` records and `tokens` padded tokens each."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) == size or (len(cur) + 1) * lengths[i] > tokens):
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


def _project(rows: Sequence[list[int]], losses_for: Callable[[list[int], Any], Callable[[Any], Any]], model: Any,
             owners: list[tuple[Any, str]], project: Callable[[Any], Any], device: str, batch: int,
             on_item: Callable[[], None] | None) -> Any:
    """Projected per-example gradients [N, proj_dim] (float32, CPU) in `rows` order: rows of token ids in batches
    of similar length (sorted, so padding is small), right-padded; `losses_for(indices, padded ids)` gives the
    batch's row losses."""
    import torch

    dim = sum(getattr(m, k).numel() for m, k in owners)
    size, tokens = batch_size_for(dim, device, batch), token_budget(model, device)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    out: list[Any] = [None] * len(rows)
    for part in _batches(order, [len(r) for r in rows], size, tokens):
        width = max(len(rows[i]) for i in part)
        ids = torch.zeros((len(part), width), dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for j, i in enumerate(part):
            ids[j, : len(rows[i])] = torch.tensor(rows[i])
            mask[j, : len(rows[i])] = 1
        model.zero_grad(set_to_none=True)
        ids, mask = ids.to(device), mask.to(device)
        g = _batch_grads(model, owners, ids, mask, losses_for(part, ids))
        proj = project(g.detach()).float().cpu()
        for j, i in enumerate(part):
            out[i] = proj[j]
            if on_item:
                on_item()
    return torch.stack(out) if out else torch.zeros(0, 0)


def project_records(records: Sequence[Any], model: Any, owners: list[tuple[Any, str]],
                    project: Callable[[Any], Any], device: str, batch: int = 32,
                    on_item: Callable[[], None] | None = None) -> Any:
    """Projected per-example training-loss gradients [N, proj_dim] (float32, CPU) in `records` order."""
    import torch

    def losses_for(part: list[int], ids: Any) -> Callable[[Any], Any]:
        labels = torch.full(ids.shape, IGNORE, dtype=torch.long)
        for j, i in enumerate(part):
            labels[j, : len(records[i].labels)] = torch.tensor(records[i].labels)
        labels = labels.to(ids.device)
        return lambda logits: train_losses(logits, labels)

    return _project([r.input_ids for r in records], losses_for, model, owners, project, device, batch, on_item)


def project_lost(questions: Sequence[Any], model: Any, owners: list[tuple[Any, str]], tok: Any,
                 project: Callable[[Any], Any], device: str, batch: int = 32,
                 on_item: Callable[[], None] | None = None) -> Any:
    """Projected gradients [N, proj_dim] of the lost questions' losses (gradients.lost_loss), batched."""
    rows, letters, answers = zip(*(lost_inputs(tok, q) for q in questions), strict=True) if questions else ((), (), ())

    def losses_for(part: list[int], ids: Any) -> Callable[[Any], Any]:
        last, lets, ans = [len(rows[i]) - 1 for i in part], [letters[i] for i in part], [answers[i] for i in part]
        return lambda logits: lost_losses(logits, last, lets, ans)

    return _project(list(rows), losses_for, model, owners, project, device, batch, on_item)
