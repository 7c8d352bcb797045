"""The loss only where it matters: lm_head and cross-entropy on the trained positions only, chunked.

AgentTuning trains on the assistant turns alone (§2.1: the loss is on the model's outputs, ``loss: true`` turns in
AgentInstruct; §2.2 mixes in general chat the same way). In a typical agent trajectory most tokens are
instructions and environment observations that carry no loss, yet the standard path — ``model(input_ids,
labels=labels)`` — projects *every* position onto the vocabulary (128k columns for Llama 3) and only then throws the
masked ones away. On CPU that projection dominates training time; on GPU its ``(tokens, vocab)`` float32 logits
dominate memory for long packed rows. So:

1. run the model's **body** only (``get_decoder()``; for PEFT models the LoRA-injected body of the base model) to
   get the last hidden states ``h``;
2. keep the positions whose **next-token** label is trained: ``h[t]`` predicts ``labels[t + 1]``, so the selection
   is ``labels[:, 1:] != -100`` applied to ``h[:, :-1]``;
3. apply ``lm_head`` + cross-entropy to those positions only, ``chunk`` at a time, so at most
   ``(chunk, vocab)`` logits exist at once however long the packed row is.

Three implementations of step 3 (``impl``):

* ``"fused"`` — one :class:`torch.autograd.Function` that, chunk by chunk, computes the logits, the per-token loss
  *and* the gradients with respect to ``h``, the head weight and bias (``softmax - onehot`` times the weight /
  the hidden states), keeping only those gradients; backward just scales them by the incoming gradient. Each
  chunk's logits are computed once (no recomputation) and freed at once. Needs the head to be a plain
  ``nn.Linear`` whose weight is a whole tensor (single device, DDP).
* ``"checkpoint"`` — each chunk's ``head(h) -> logits -> CE`` under :func:`torch.utils.checkpoint.checkpoint`: the
  logits are dropped after the forward and recomputed in backward. Calls the head *module*, so it works for any
  head (LoRA on ``lm_head``, DeepSpeed ZeRO-3's partitioned weights gathered by module hooks, FSDP).
* ``"full"`` — the model's own forward, logits at every position, then CE on the trained ones: the reference,
  and the fallback for heads whose logit post-processing this module does not know.

Logit post-processing known here (:func:`logit_transform`): Gemma-style ``final_logit_softcapping``, Cohere's
``logit_scale`` and Granite's ``logits_scaling``. The trainer checks the body+head decomposition against the model's
own forward on a probe before training (:func:`check_decomposition`) and falls back to ``"full"`` if they disagree.

**Explicit targets.** Shared-prefix rows (:mod:`agenttuning.tokens.prefix_tree`) cannot be scored by shifting
labels: the last token of a shared prefix predicts a different next token in each branch, and a trained target
inside a shared prefix stands for every example through it. They come with ``targets=(index, token, weight)``
instead — hidden state ``index`` (row-major) predicts ``token``, counted ``weight`` times — and every
implementation computes ``sum(weight * CE)`` (``fused`` scales each row's ``softmax - onehot`` by its weight before
forming the gradients; without weights the kernel does exactly what it did before).

**Normalisation.** Every implementation returns the *sum* of the per-token losses and the per-token losses
themselves (detached), never a mean. The trainer divides by the number of trained tokens in the whole *global*
batch (all processes, all accumulation micro-batches) — known in advance on every process, since every process
plans the same global batch — so the gradient is that of the mean over all trained tokens of the global batch,
whatever the split into processes and micro-batches (a per-micro-batch mean would weight a short micro-batch's
tokens more).

    >>> import torch
    >>> h, w = torch.randn(5, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    >>> t = torch.tensor([1, 4, 4, 0, 10])
    >>> total, per_token = fused_linear_cross_entropy(h, w, None, t, chunk=2)
    >>> ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum")
    >>> bool(torch.allclose(total, ref)), per_token.shape
    (True, torch.Size([5]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from agenttuning.tokens.record import IGNORE_INDEX

DEFAULT_CHUNK = 1024

# (index, token, weight): explicit loss targets, see causal_lm_loss
Targets = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


# ------------------------------------------------------------------------------------------------------------------
# Which positions train


def trained_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(batch, seq - 1)`` bool: position ``t`` is trained iff ``labels[:, t + 1] != -100`` (next-token shift).

    >>> trained_mask(torch.tensor([[-100, 5, -100, 7]])).tolist()
    [[True, False, True]]
    """
    return labels[:, 1:] != IGNORE_INDEX


def select_trained(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, targets)``: the hidden states ``(n, hidden)`` that predict a trained label, and those labels ``(n,)``.

    Positions come in row-major order of :func:`trained_mask`.
    """
    mask = trained_mask(labels)
    return hidden[:, :-1][mask], labels[:, 1:][mask]


# ------------------------------------------------------------------------------------------------------------------
# "fused": gradient computed in the forward, chunk by chunk


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of ``CE(hidden @ weight.T + bias, targets)``; gradients formed in the forward (module doc)."""

    @staticmethod
    def forward(ctx: Any, hidden, weight, bias, targets, chunk: int, weights=None):  # type: ignore[override]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        n = hidden.shape[0]
        device_type = hidden.device.type
        autocast = torch.is_autocast_enabled(device_type)
        mm_dtype = torch.get_autocast_dtype(device_type) if autocast else weight.dtype
        acc = torch.promote_types(mm_dtype, torch.float32)  # softmax and accumulation: float32 at least
        losses = torch.empty(n, dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        w_mm = weight.to(mm_dtype)  # one cast for all chunks (a no-op without autocast)
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk].to(mm_dtype)
            t = targets[start : start + chunk]
            logits = F.linear(h, w_mm, bias).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            losses[start : start + chunk] = lse - logits.gather(1, t[:, None]).squeeze(1)
            if not (need_h or need_w or need_b):
                continue
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place: d(lse - logit_t)/d logits = p - onehot
            probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if weights is not None:  # d(sum w * loss): each row's gradient times its weight
                probs.mul_(weights[start : start + chunk, None])
            if need_b:
                grad_b += probs.sum(0)
            g = probs.to(mm_dtype)
            del probs, logits
            if need_h:
                grad_h[start : start + chunk] = g @ w_mm
            if need_w:
                grad_w += g.t() @ h
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(losses)
        total = losses.sum() if weights is None else (losses * weights).sum()
        return total, losses

    @staticmethod
    def backward(ctx: Any, grad_total, _grad_losses):  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError("the fused loss frees its gradients after one backward; use loss_impl='checkpoint'")
        grads, ctx.grads = ctx.grads, None
        out = []
        for g, dtype in zip(grads, ctx.dtypes, strict=True):
            out.append(None if g is None else g.mul_(grad_total.to(g.dtype)).to(dtype))
        return out[0], out[1], out[2], None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of CE, per-token CE detached)`` of ``hidden @ weight.T + bias`` against ``targets``: ``(n, H)``, ``(n,)``.

    ``weights`` ``(n,)``: the sum is ``sum(weights * CE)`` and each row's gradient is scaled by its weight (a shared
    target standing for several examples, :mod:`agenttuning.tokens.prefix_tree`); the per-token CE stays unweighted.
    Without weights nothing extra is computed. Memory is ``O(chunk * vocab)`` for logits plus ``O(n * H + V * H)``
    for the gradients it keeps. The gradient of the weight is accumulated in float32. The result supports one
    backward pass.
    """
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not needs_grad:
        with torch.no_grad():
            losses = _chunked_ce_values(hidden, lambda h: F.linear(h, weight, bias), targets, chunk)
        return _weighted_sum(losses, weights), losses
    if weights is not None:
        weights = weights.to(device=hidden.device, dtype=torch.promote_types(weights.dtype, torch.float32))
    return _FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, weights)


def _weighted_sum(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return losses.sum() if weights is None else (losses * weights.to(losses.dtype)).sum()


def _float(x: torch.Tensor) -> torch.Tensor:
    """Upcast to float32 at least (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _chunked_ce_values(hidden, head: Callable, targets, chunk: int) -> torch.Tensor:
    parts = [
        F.cross_entropy(_float(head(hidden[s : s + chunk])), targets[s : s + chunk], reduction="none")
        for s in range(0, hidden.shape[0], chunk)
    ]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------------------------
# "checkpoint": any head module, logits recomputed in backward


def _head_ce(head: Callable, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_float(head(h)), t, reduction="none")


def checkpointed_cross_entropy(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of CE, per-token CE detached)`` of ``head(hidden)``, each chunk under activation checkpointing.

    ``weights``: as in :func:`fused_linear_cross_entropy` (the sum is weighted, the per-token CE is not)."""
    if not torch.is_grad_enabled():
        losses = _chunked_ce_values(hidden, head, targets, chunk)
        return _weighted_sum(losses, weights), losses
    fn = functools.partial(_head_ce, head)
    parts = [
        checkpoint(fn, hidden[s : s + chunk], targets[s : s + chunk], use_reentrant=False)
        for s in range(0, hidden.shape[0], chunk)
    ]
    losses = torch.cat(parts)
    return _weighted_sum(losses, weights), losses.detach()


# ------------------------------------------------------------------------------------------------------------------
# The model's parts


def logit_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the model's forward does to ``lm_head``'s output before returning logits (None: nothing known)."""
    config = getattr(model, "config", None)
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(model, "logit_scale", None)  # Cohere: logits * logit_scale (a float attribute)
    divide = getattr(config, "logits_scaling", None)  # Granite: logits / logits_scaling
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if isinstance(scale, (int, float)) and scale != 1:
        steps.append(lambda x: x * scale)
    if isinstance(divide, (int, float)) and divide != 1:
        steps.append(lambda x: x / divide)
    if cap:
        steps.append(lambda x: torch.tanh(x.float() / cap) * cap)
    if not steps:
        return None

    def transform(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return transform


def base_model_of(model: nn.Module) -> nn.Module:
    """The Hugging Face ``*ForCausalLM`` inside ``model`` (unwrapping PEFT; LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, Callable | None]:
    """``(body, head, transform)``: the decoder that gives last hidden states, the lm_head module, its post-op."""
    base = base_model_of(model)
    body = base.get_decoder()
    head = base.get_output_embeddings()
    if body is base or head is None:
        raise ValueError(f"{type(base).__name__}: cannot split into a decoder body and an output head")
    return body, head, logit_transform(base)


def fusable(head: nn.Module, transform: Callable | None) -> bool:
    """Whether the ``"fused"`` path applies: a plain ``nn.Linear`` head with whole (not partitioned) weights."""
    if transform is not None or type(head) is not nn.Linear:
        return False
    w = head.weight
    return not hasattr(w, "ds_id") and w.dim() == 2 and w.numel() > 0


def resolve_impl(model: nn.Module, impl: str = "auto", *, sharded: bool = False) -> str:
    """The implementation ``"auto"`` means here: fused where possible, checkpoint when sharded or exotic, else full."""
    if impl != "auto":
        return impl
    try:
        _, head, transform = model_parts(model)
    except (ValueError, AttributeError, NotImplementedError):
        return "full"
    if not sharded and fusable(head, transform):
        return "fused"
    return "checkpoint"


# ------------------------------------------------------------------------------------------------------------------
# The loss of a causal LM on a (packed) batch


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    chunk: int = DEFAULT_CHUNK,
    targets: Targets | None = None,
    **model_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_sum, token_losses)`` over the positions whose next label is trained (see the module doc).

    ``token_losses`` (float32, detached) follow the row-major order of :func:`trained_mask`. ``model_kwargs``
    go to the model (``attention_mask``, flash ``cu_seq_lens_*``); ``use_cache`` is always off, which keeps packed
    examples isolated (see :mod:`agenttuning.tokens.packing`).

    ``targets`` ``(index, token, weight)``, three ``(n,)`` tensors, replace the shifted ``labels`` (then ignored):
    the hidden state at flat position ``index`` (row-major over ``input_ids``) predicts ``token``, its loss counted
    ``weight`` times (a shared-prefix layout, :mod:`agenttuning.tokens.prefix_tree`); ``weight`` may be None (all
    1). ``token_losses`` then follow the targets and are unweighted.
    """
    impl = resolve_impl(model, impl)
    model_kwargs["use_cache"] = False
    if impl == "full":
        logits = model(input_ids=input_ids, position_ids=position_ids, **model_kwargs).logits
        if targets is not None:
            index, tokens, weights = targets
            if index.numel() == 0:
                return logits.sum() * 0.0, logits.new_zeros(0, dtype=torch.float32)
            losses = F.cross_entropy(_float(logits.flatten(0, 1)[index]), tokens, reduction="none")
            return _weighted_sum(losses, weights), losses.detach()
        mask = trained_mask(labels)
        if not bool(mask.any()):
            return logits.sum() * 0.0, logits.new_zeros(0, dtype=torch.float32)
        losses = F.cross_entropy(_float(logits[:, :-1][mask]), labels[:, 1:][mask], reduction="none")
        return losses.sum(), losses.detach()
    body, head, transform = model_parts(model)
    out = body(input_ids=input_ids, position_ids=position_ids, **model_kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    weights = None
    if targets is not None:
        index, tokens, weights = targets
        h = hidden.flatten(0, 1)[index]
    else:
        h, tokens = select_trained(hidden, labels)
    if h.shape[0] == 0:  # keep every parameter in the graph (DDP/ZeRO expect a gradient for each)
        return head(hidden[:, :1]).float().sum() * 0.0, hidden.new_zeros(0, dtype=torch.float32)
    if impl == "fused":
        if not fusable(head, transform):
            raise ValueError("loss_impl='fused' needs a plain nn.Linear lm_head and no logit post-processing")
        return fused_linear_cross_entropy(h, head.weight, head.bias, tokens, chunk, weights)
    if impl == "checkpoint":
        head_fn = head if transform is None else (lambda x: transform(head(x)))
        return checkpointed_cross_entropy(h, head_fn, tokens, chunk, weights)
    raise ValueError(f"unknown loss implementation {impl!r}; expected auto, fused, checkpoint or full")


class CausalLMLoss(nn.Module):
    """A causal LM whose ``forward`` returns ``(loss_sum, token_losses)``: the module handed to ``accelerate``.

    Wrapping the model (rather than calling its parts from the training loop) keeps every call inside the
    distributed wrapper's forward, where DDP, FSDP and DeepSpeed ZeRO-3 expect it. ``_no_split_modules`` and
    ``config`` are forwarded from the Hugging Face model for FSDP auto-wrapping and DeepSpeed's ``auto`` values.
    ``forward(..., impl="full")`` computes the reference path (used by :func:`check_decomposition`).
    """

    def __init__(self, model: nn.Module, impl: str = "auto", chunk: int = DEFAULT_CHUNK):
        super().__init__()
        self.model = model
        self.impl = impl
        self.chunk = chunk
        base = base_model_of(model)
        self.config = base.config
        self._no_split_modules = getattr(base, "_no_split_modules", None)

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        """Re-tie the model's tied weights (FSDP calls this after moving the module to the meta device)."""
        tie = getattr(self.model, "tie_weights", None)
        if callable(tie):
            tie(*args, **kwargs)

    def forward(self, input_ids, labels, position_ids=None, impl: str | None = None, targets=None, **model_kwargs):
        return causal_lm_loss(
            self.model, input_ids, labels, position_ids, impl=impl or self.impl, chunk=self.chunk, targets=targets,
            **model_kwargs,
        )  # fmt: skip


@torch.no_grad()
def check_decomposition(
    loss_model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None, rtol: float
) -> tuple[bool, float, float]:
    """Compare the chunked path with the model's own forward on a probe (every next token trained).

    Returns ``(agree, chunked_sum, full_sum)``. Runs in eval mode (no dropout, no RNG use); call it on every
    process at once (sharded models gather weights collectively).
    """
    was_training = loss_model.training
    loss_model.eval()
    try:
        labels = input_ids.clone()
        ours = float(loss_model(input_ids, labels, position_ids)[0])
        ref = float(loss_model(input_ids, labels, position_ids, impl="full")[0])
    finally:
        loss_model.train(was_training)
    return abs(ours - ref) <= rtol * max(abs(ref), 1e-6), ours, ref


__all__ = [
    "DEFAULT_CHUNK",
    "CausalLMLoss",
    "Targets",
    "base_model_of",
    "causal_lm_loss",
    "check_decomposition",
    "checkpointed_cross_entropy",
    "fusable",
    "fused_linear_cross_entropy",
    "logit_transform",
    "model_parts",
    "resolve_impl",
    "select_trained",
    "trained_mask",
]
