"""Per-example gradients on the adapter's weights, randomly projected to a small dimension.

The gradient of one example's loss is taken with respect to the adapter's trainable tensors only (LoRA's A and
B, IA3's vectors, a prompt encoder...: whatever PEFT marks trainable), flattened, and projected by dattri's
random projector (sparse SJLT by default; TRAK's dense Rademacher/Gaussian matrix on request), so a record costs
`proj_dim` floats however large the adapter. Gradients are exact per example (one backward pass
each, dropout off), so the trainer's loss mask holds exactly.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

from tuneforge.common.errors import TuneforgeError

IGNORE = -100
# CPU projection: the dense matrix is held whole up to this many bytes, else dattri regenerates it in blocks.
PROJ_MATRIX_BYTES = 1 << 30


def require_dattri() -> Any:
    from tuneforge.common.extras import require

    require("attribution", "attribute")
    import dattri.func.projection as proj

    return proj


def load_model(base: str, adapter: str, device: str) -> Any:
    """The base with the adapter on top, its adapter tensors trainable, in float32 and eval mode (no dropout)."""
    import torch
    from peft import PeftModel

    from tuneforge.common.models import load_causal_lm

    model = load_causal_lm(base, dtype=torch.float32, device=device)
    model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    model.eval()
    return model


def set_adapter_weights(model: Any, folder: Any) -> None:
    """Load another checkpoint's adapter weights into the same model (TracIn's checkpoints)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    model.eval()


def trainable(model: Any) -> list[Any]:
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise TuneforgeError("the adapter has no trainable tensors to attribute over")
    return params


class CountSketch:
    """A sparse JL projection (SJLT with one nonzero a column, Kane & Nelson 2014): each gradient coordinate is
    added, with a random sign, to one of `proj_dim` outputs. Unbiased for inner products, like the dense
    Rademacher matrix, but it stores 2 small vectors instead of a dim x proj_dim matrix and costs one pass over
    the gradient: what makes CPU attribution of million-weight adapters a matter of seconds a batch. On CUDA,
    dattri's `sjlt` kernel (the `sjlt` package) does the same when installed."""

    def __init__(self, dim: int, proj_dim: int, seed: int, device: str) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        self.proj_dim = proj_dim
        self.bucket = torch.randint(0, proj_dim, (dim,), generator=g).to(device)
        self.sign = (torch.randint(0, 2, (dim,), generator=g, dtype=torch.int8) * 2 - 1).to(device)

    def __call__(self, x: Any) -> Any:
        import torch

        out = torch.zeros(x.shape[0], self.proj_dim, dtype=torch.float32, device=x.device)
        return out.index_add_(1, self.bucket, x.float() * self.sign)


def make_projector(dim: int, proj_dim: int, seed: int, proj_type: str, device: str) -> Callable[[Any], Any]:
    """[B, dim] gradients -> [B, proj_dim], the same projection for every call (seeded).

    `sjlt` (default): dattri's SJLT kernel on CUDA when the `sjlt` package is there, else CountSketch here.
    `rademacher`/`normal`: dattri's dense projectors (TRAK's); on CPU the matrix is held whole when it fits
    PROJ_MATRIX_BYTES, else dattri regenerates it block by block for every batch (slow for large adapters)."""
    import torch

    proj = require_dattri()
    if proj_type == "identity":
        return lambda x: x
    cuda = str(device).startswith("cuda")
    if proj_type == "sjlt" and not (cuda and importlib.util.find_spec("sjlt") is not None):
        return CountSketch(dim, proj_dim, seed, device)
    if cuda:
        fn = proj.random_project(torch.zeros(1, dim, device=device), 1, proj_dim, 32, seed, proj_type,
                                 device=device)
        return lambda x: fn(x)
    if proj_type not in ("rademacher", "normal"):
        raise TuneforgeError(f"projection {proj_type!r} runs on CUDA only; on CPU use sjlt, rademacher or normal")
    block = max(1, min(proj_dim, PROJ_MATRIX_BYTES // (4 * dim)))
    p = proj.BasicProjector(feature_dim=dim, proj_dim=proj_dim, seed=seed, proj_type=proj.ProjectionType(proj_type),
                            device=torch.device("cpu"), block_size=block)
    return lambda x: p.project(x, 0)


def _flat_grad(loss: Any, params: list[Any]) -> Any:
    import torch

    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params,
                                                                                                 strict=True)])


def project_batches(items: Iterable[Any], loss_fn: Callable[[Any], Any], model: Any, project: Callable[[Any], Any],
                    batch: int = 16, on_item: Callable[[], None] | None = None) -> Any:
    """loss_fn(item) -> scalar loss; returns the projected gradients [N, proj_dim] (float32, CPU)."""
    import torch

    params = trainable(model)
    out, pending = [], []
    for it in items:
        model.zero_grad(set_to_none=True)
        pending.append(_flat_grad(loss_fn(it), params).detach())
        if len(pending) == batch:
            out.append(project(torch.stack(pending)).float().cpu())
            pending = []
        if on_item:
            on_item()
    if pending:
        out.append(project(torch.stack(pending)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def train_losses(logits: Any, labels: Any) -> Any:
    """Each row's training loss [B]: mean cross-entropy over its trained (label) tokens, as SFT computes it.
    `logits` [B, T, V] are the rows' own positions (padding after them is masked by IGNORE labels)."""
    import torch

    logits, tgt = logits[:, :-1].float(), labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                            ignore_index=IGNORE, reduction="none").view(tgt.shape)
    return tok.sum(1) / (tgt != IGNORE).sum(1).clamp(min=1)


def lost_inputs(tok: Any, q: Any) -> tuple[list[int], list[int], int]:
    """A lost question as the check scored it: the prompt's token ids, its option letters' token ids, and the
    index of the base's (correct) answer among them."""
    from tuneforge.eval.native import letter_token_ids

    bos = getattr(tok, "bos_token", None)
    ids = tok(q.prompt, add_special_tokens=not (bos and q.prompt.startswith(bos))).input_ids
    return ids, letter_token_ids(tok, q.prompt[-32:], q.sep, q.letters), q.letters.index(q.answer)


def lost_losses(logits: Any, last: list[int], letters: list[list[int]], answers: list[int]) -> Any:
    """Each lost question's loss [B]: minus the log-likelihood of the base's answer among its option letters,
    read where the check reads them (the next token after the prompt, row b's position `last[b]`)."""
    import torch

    return torch.stack([-torch.log_softmax(logits[b, t, lets].float(), dim=-1)[ans]
                        for b, (t, lets, ans) in enumerate(zip(last, letters, answers, strict=True))])


def _own_positions(logits: Any, n: int) -> Any:
    """Prompt tuning prepends its virtual tokens' positions to the logits: a row's own are the last `n`."""
    return logits[:, -n:]


def train_loss(model: Any, device: str) -> Callable[[Any], Any]:
    """A record's training loss (`train_losses`), one record a forward pass."""
    import torch

    def f(rec: Any) -> Any:
        ids = torch.tensor([rec.input_ids], device=device)
        labels = torch.tensor([rec.labels], device=device)
        return train_losses(_own_positions(model(input_ids=ids).logits, ids.shape[1]), labels)[0]

    return f


def lost_loss(model: Any, tok: Any, device: str) -> Callable[[Any], Any]:
    """A lost question's loss under the tuned model (`lost_losses`), one question a forward pass."""
    import torch

    def f(q: Any) -> Any:
        ids, letters, answer = lost_inputs(tok, q)
        logits = _own_positions(model(input_ids=torch.tensor([ids], device=device)).logits, len(ids))
        return lost_losses(logits, [len(ids) - 1], [letters], [answer])[0]

    return f
