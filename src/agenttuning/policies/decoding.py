"""Batched generation that starts each prompt from the longest prefix whose KV is already stored.

:class:`~agenttuning.policies.hf.HFPolicy` uses :func:`generate_reusing` instead of ``model.generate`` when
``kv_reuse`` is on and :func:`reuse_unsupported` finds nothing against the model. ``model.generate`` cannot do this
itself: it takes one ``past_key_values`` for the whole batch, so every row would need the same cached length.

One batch of ``B`` prompts (lengths ``n_i``, longest ``W``) runs in one preallocated buffer of shape
``[layers, 2, B, kv_heads, W + max_new - 1, head_dim]`` (``2``: keys, values); row ``i``'s prompt occupies columns
``[W - n_i, W)`` (left padding: the pad columns are zeros and masked out), generated tokens go to columns ``W, W+1,
...``, the same column for every row at a step.

1. **Prefill, one request at a time.** For row ``i``: look up the longest stored prefix of ``prompt[:-1]`` (at least
   the last prompt token is always computed, for its logits), copy its KV into the row's columns, run the model on
   the rest (the *suffix*) with positions ``L..n_i-1`` and a cache object whose layers are views of the row's
   columns (a batch of one, no padding: exactly the row alone), then store the whole prompt's KV (only the suffix is
   new to the store). Rows run in order, so a batch of new episodes computes the environment's shared context once
   (row 1) and rows 2.. reuse it. The alternative, ``prefill="batched"``, runs all suffixes in one left-padded
   forward; it must look every row up first (so a cold batch computes the shared context once per row) and pads
   short suffixes to the longest: on a 2-core CPU it was 10 % slower over 20 db-v1 episodes (2.40x against 2.66x
   over ``generate``; ``benchmarks/kv_reuse.py --prefill both``, RESULTS.md). On an accelerator, where small
   per-request forwards waste more, it may win: it is kept for measuring that.
2. **Decode, all rows together.** One forward per step over every unfinished row: input ``[B, 1]``, position
   ``n_i + t`` per row, a 2D attention mask over the buffer's columns (pads off), logits of that one position.
   The cache layers write the step's keys/values into the buffer in place and hand back views (no ``torch.cat``
   of the whole cache per step and layer, which is what a ``DynamicCache`` costs). When half of the rows have
   finished, the buffer is compacted to the live rows (``index_select``), so a long reply does not make every
   finished row pay for each further step.
3. **Selection** exactly as ``generate`` with ``do_sample=False`` does it: float32 logits of the last position,
   through the optional Gumbel-max sampler (``argmax(logits / T + noise)``), ``argmax``. A row ends at its first
   stop token or after ``max_new`` tokens; when it ends, its prompt plus generated tokens (all but the last, whose
   KV was never computed) go to the store, which is what the next turn of its episode starts with.

Positions, masks and the causal order make each row's computation the same as running that row alone, up to
floating-point summation order, as for ``generate``'s left-padded batches: greedy output equals the ``generate``
path token for token (tested on a random tiny Llama and on SmolLM2-135M; a near-tie in the logits could in
principle flip).

:func:`reuse_unsupported` says why a model cannot take this path (the policy then falls back to ``generate``):
an encoder-decoder; a forward without a ``cache``/``past_key_values`` or ``position_ids`` argument; an attention
implementation other than ``sdpa``/``eager`` (e.g. flash-attention's unpadding); a cache that is not made of plain
full-attention ``DynamicLayer``s (sliding-window, chunked, hybrid/linear-attention/mamba, KV-sharing layers:
their caches hold less than every past token, or other state); layers spread over several devices or with differing
KV shapes; or generation-config settings that make ``generate`` alter greedy logits or stop on its own
(repetition penalty, minimum length, suppressed or forced tokens, stop strings...).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agenttuning.policies.kv_cache import PrefixKVStore

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["KVLayout", "generate_reusing", "probe_layout", "reuse_unsupported", "weights_key"]

# generation-config fields under which generate() changes greedy logits or stops early; value = the neutral values
_GENERATION_FIELDS: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "stop_strings": (None,),
    "max_time": (None,),
}


@dataclass(frozen=True)
class KVLayout:
    """What the decoding loop needs to know about a model's cache: the forward's keyword, shapes, dtype, device."""

    cache_kwarg: str  # "cache" (transformers >= 5.x) or "past_key_values"
    layers: int
    kv_heads: int
    head_dim: int
    dtype: Any
    device: Any
    logits_to_keep: bool  # the forward takes logits_to_keep (so the prefill projects only the last position)

    def bytes_per_token(self) -> int:
        import torch

        return 2 * self.layers * self.kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()


def reuse_unsupported(model: Any) -> str | None:
    """Why :func:`generate_reusing` cannot run ``model`` (None: it can); static checks (see :func:`probe_layout`)."""
    config = getattr(model, "config", None)
    if config is None:
        return "the model has no config"
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # pragma: no cover - transformers without the layered cache API
        return "this transformers version has no DynamicLayer cache API"
    params = inspect.signature(model.forward).parameters
    if "cache" not in params and "past_key_values" not in params:
        return "its forward takes no cache / past_key_values argument"
    if "position_ids" not in params:
        return "its forward takes no position_ids"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} (the loop supports sdpa and eager)"
    try:
        layers = DynamicCache(config=config).layers
    except Exception as e:  # noqa: BLE001 - any config DynamicCache cannot read is unsupported
        return f"DynamicCache cannot be built from its config: {type(e).__name__}: {e}"
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if not layers or odd:
        return "its layers are not all full attention with a plain DynamicLayer cache" + (
            f" (found {', '.join(odd)})" if odd else ""
        )
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        set_fields = [
            name for name, neutral in _GENERATION_FIELDS.items()
            if getattr(generation_config, name, None) not in neutral
        ]  # fmt: skip
        if set_fields:
            return f"its generation config sets {', '.join(set_fields)} (generate would apply them)"
    return None


def probe_layout(model: Any, token_id: int) -> KVLayout:
    """Run one token through ``model``'s decoder (without the vocabulary projection) with a ``DynamicCache`` and
    read the KV layout from it.

    Raises ``ValueError`` when the cache does not have one full-attention layer per decoder layer with equal shapes
    on one device (the policy then falls back to ``generate``).
    """
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer

    params = inspect.signature(model.forward).parameters
    kwarg = "cache" if "cache" in params else "past_key_values"
    cache = DynamicCache(config=model.config)
    device = _input_device(model)
    runner = model
    decoder = getattr(model, "get_decoder", lambda: None)()
    if decoder is not None and decoder is not model and kwarg in inspect.signature(decoder.forward).parameters:
        runner = decoder  # the same layers and cache, without the lm_head (cheaper; no lm_head hook sees a call)
    with torch.inference_mode():
        runner(input_ids=torch.tensor([[token_id]], device=device), use_cache=True, **{kwarg: cache})
    shapes = set()
    for layer in cache.layers:
        if type(layer) is not DynamicLayer or layer.keys is None or layer.keys.shape[-2] != 1:
            raise ValueError(f"cache layer {type(layer).__name__} did not store the one probe token")
        shapes.add((tuple(layer.keys.shape), tuple(layer.values.shape), layer.keys.dtype, layer.keys.device))
    if len(shapes) != 1:
        raise ValueError("the layers' KV differ in shape, dtype or device (e.g. a model spread over devices)")
    (k_shape, v_shape, dtype, kv_device) = shapes.pop()
    if k_shape != v_shape:
        raise ValueError(f"keys {k_shape} and values {v_shape} differ in shape")
    return KVLayout(kwarg, len(cache.layers), k_shape[1], k_shape[3], dtype, kv_device, "logits_to_keep" in params)


def weights_key(model: Any, layout: KVLayout) -> tuple:
    """What stored KV depends on: dtype, device and every parameter's identity, storage and in-place version
    counter (an optimizer step or ``load_state_dict`` bumps the counter; ``.to()`` swaps the storage)."""
    return (
        layout.dtype,
        str(layout.device),
        tuple((id(p), p.data_ptr(), p._version) for p in model.parameters()),
    )


# ---------------------------------------------------------------------------------------------------------------------
# The cache object handed to the model: its layers write into slices of our buffer


def _cache_classes() -> tuple[type, type]:
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class BufferLayer(DynamicLayer):
        """A full-attention cache layer over a preallocated ``[batch, heads, capacity, head_dim]`` key and value
        buffer: ``update`` writes the new tokens' KV at the current length and returns views up to it."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            super().__init__()
            self._k_buf, self._v_buf, self.length = keys, values, length
            self.device = keys.device
            self.is_initialized = True
            self.keys, self.values = keys[:, :, :length], values[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):  # type: ignore[no-untyped-def]
            end = self.length + key_states.shape[-2]
            self._k_buf[:, :, self.length : end] = key_states
            self._v_buf[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self._k_buf[:, :, :end], self._v_buf[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

    class BufferCache(DynamicCache):
        """A DynamicCache (for models that check the type) whose layers are :class:`BufferLayer` s."""

        def __init__(self, layers: list) -> None:  # noqa: D107 - bypasses DynamicCache's config-driven layer setup
            Cache.__init__(self, layers=layers)

    return BufferLayer, BufferCache


_CLASSES: tuple[type, type] | None = None


def _buffer_cache(buf: torch.Tensor, length: int) -> Any:
    """A cache over ``buf`` (``[layers, 2, B, heads, capacity, dim]``) holding ``length`` columns already."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _cache_classes()
    layer_cls, cache_cls = _CLASSES
    return cache_cls([layer_cls(buf[i, 0], buf[i, 1], length) for i in range(buf.shape[0])])


# ---------------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Row:
    index: int  # position in the caller's list
    prompt: list[int]
    col0: int  # the buffer column of the prompt's first token
    out: list[int]


def generate_reusing(
    model: Any,
    prompts: Sequence[Sequence[int]],
    store: PrefixKVStore,
    layout: KVLayout,
    *,
    max_new: int,
    stop_ids: Sequence[int],
    pad_id: int,
    sampler: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    prefill: str = "rows",
    record_logits: list[list[torch.Tensor]] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Generate for every prompt; ``(completions, cached)``: each row's new tokens (up to and including the first
    stop token, at most ``max_new``) and how many of its prompt tokens were served from ``store``.

    Call under the model's lock and ``torch.inference_mode()`` (HFPolicy does). See the module docstring.
    ``prefill="batched"`` prefills all suffixes in one forward instead of one request at a time (see
    :func:`_prefill_batched`; kept for measurement). ``record_logits`` (one empty list per prompt) receives each
    row's float32 logits of every step, before sampling (for tests: compare with ``generate(output_logits=True)``).
    """
    import torch

    if prefill not in ("rows", "batched"):
        raise ValueError(f"prefill must be 'rows' or 'batched', not {prefill!r}")
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")

    store.validate(weights_key(model, layout))
    stops = set(stop_ids)
    device = layout.device
    width = max(len(p) for p in prompts)
    capacity = width + max_new - 1  # the last generated token is never fed back
    rows = [_Row(i, list(p), width - len(p), []) for i, p in enumerate(prompts)]
    n = len(rows)
    buf = torch.empty(
        (layout.layers, 2, n, layout.kv_heads, capacity, layout.head_dim), dtype=layout.dtype, device=device
    )
    valid = torch.zeros((n, capacity), dtype=torch.bool, device=device)  # the attention mask over buffer columns
    for j, row in enumerate(rows):
        if row.col0:
            buf[:, :, j, :, : row.col0].zero_()  # pads must be finite: masked weights are 0, and 0 * NaN is NaN
        valid[j, row.col0 :] = True

    # 1. prefill: each row from its longest stored prefix
    if prefill == "rows":
        cached, scores = _prefill_rows(model, layout, store, rows, buf)
    else:
        cached, scores = _prefill_batched(model, layout, store, rows, buf, valid, width)

    # 2. decode all rows together, 3. select each step's tokens
    slots: list[int | None] = list(range(n))  # buffer row k serves rows[slots[k]]; None once that row has ended
    column = width  # the buffer column the next fed token goes to
    for _ in range(max_new):
        if record_logits is not None:
            for k, r in enumerate(slots):
                if r is not None:
                    record_logits[r].append(scores[k].clone())
        if sampler is not None:
            scores = sampler(None, scores)
        chosen = scores.argmax(dim=-1).tolist()
        for k, r in enumerate(slots):
            if r is None:
                continue
            row = rows[r]
            row.out.append(chosen[k])
            if chosen[k] in stops or len(row.out) == max_new:
                # its KV: the prompt and every generated token but the last, columns [col0, column)
                store.insert(row.prompt + row.out[:-1], _slicer(buf, k, row.col0))
                slots[k] = None
        alive = [k for k, r in enumerate(slots) if r is not None]
        if not alive:
            break
        if len(alive) * 2 <= len(slots):  # compact: ended rows stop costing compute
            keep = torch.tensor(alive, device=device)
            compacted = buf.new_empty((*buf.shape[:2], len(alive), *buf.shape[3:]))
            compacted[..., :column, :] = buf[..., :column, :].index_select(2, keep)
            buf, valid = compacted, valid.index_select(0, keep)
            slots, chosen = [slots[k] for k in alive], [chosen[k] for k in alive]
        # ended rows that are still in the buffer are fed pads (as generate does) and their picks ignored
        feed = [chosen[k] if r is not None else pad_id for k, r in enumerate(slots)]
        positions = [len(rows[r].prompt) + len(rows[r].out) - 1 if r is not None else 0 for r in slots]
        scores = _forward(
            model,
            layout,
            torch.tensor(feed, device=device).unsqueeze(1),
            torch.tensor(positions, device=device).unsqueeze(1),
            valid[:, : column + 1],
            _buffer_cache(buf, column),
        )
        column += 1
    return [row.out for row in rows], cached


def _prefill_rows(
    model: Any, layout: KVLayout, store: PrefixKVStore, rows: list[_Row], buf: Any
) -> tuple[list[int], Any]:
    """One request at a time, each stored right after its forward: ``(cached, last logits)``."""
    import torch

    device = buf.device
    cached, last = [], []
    for j, row in enumerate(rows):
        reused, parts = store.match(row.prompt[:-1])
        at = row.col0
        for part in parts:
            buf[:, :, j, :, at : at + part.shape[-2]] = part
            at += part.shape[-2]
        cached.append(reused)
        suffix = torch.tensor([row.prompt[reused:]], device=device)
        positions = torch.arange(reused, len(row.prompt), device=device).unsqueeze(0)
        row_cache = _buffer_cache(buf[:, :, j : j + 1, :, row.col0 :], reused)  # the row alone: a batch of one
        last.append(_forward(model, layout, suffix, positions, None, row_cache)[0])
        store.insert(row.prompt, _slicer(buf, j, row.col0))
    return cached, torch.stack(last)


def _prefill_batched(
    model: Any, layout: KVLayout, store: PrefixKVStore, rows: list[_Row], buf: Any, valid: Any, width: int
) -> tuple[list[int], Any]:
    """All suffixes in one forward: ``(cached, last logits)``.

    With ``s`` the longest suffix, the forward covers columns ``[width - s, width)`` of every row: a row whose own
    suffix is shorter recomputes the last tokens of its cached prefix there (as much work as padding it would be,
    and no hole in its columns), a row shorter than ``s`` has left pads there (masked). Lookups all happen before
    the forward, so rows of one batch cannot reuse each other's prompts.
    """
    import torch

    device = buf.device
    matched = [store.match(row.prompt[:-1]) for row in rows]
    span = max(len(row.prompt) - n for row, (n, _) in zip(rows, matched, strict=True))
    start = width - span  # the first column of the forward
    ids, positions, cached = [], [], []
    for j, (row, (n, parts)) in enumerate(zip(rows, matched, strict=True)):
        keep = max(0, len(row.prompt) - span)  # prompt tokens before the forward's columns: all from the store
        at = row.col0
        for part in parts:
            take = min(part.shape[-2], row.col0 + keep - at)
            if take <= 0:
                break
            buf[:, :, j, :, at : at + take] = part[..., :take, :]
            at += take
        cached.append(keep)
        first = len(row.prompt) - span  # prompt position of the forward's first column (negative: pads)
        ids.append([row.prompt[q] if q >= 0 else 0 for q in range(first, len(row.prompt))])
        positions.append([max(q, 0) for q in range(first, len(row.prompt))])
    logits = _forward(
        model, layout, torch.tensor(ids, device=device), torch.tensor(positions, device=device),
        valid[:, :width], _buffer_cache(buf, start),
    )  # fmt: skip
    for j, row in enumerate(rows):
        store.insert(row.prompt, _slicer(buf, j, row.col0))
    return cached, logits


def _slicer(buf: torch.Tensor, j: int, col0: int) -> Callable[[int, int], torch.Tensor]:
    """``kv(start, end)`` for :meth:`PrefixKVStore.insert`: a copy of tokens ``[start, end)`` of buffer row ``j``."""

    def kv(start: int, end: int) -> torch.Tensor:
        return buf[:, :, j, :, col0 + start : col0 + end].clone()

    return kv


def _forward(
    model: Any,
    layout: KVLayout,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Any,
) -> torch.Tensor:
    """The float32 logits of the last position of each row."""
    import torch

    kwargs: dict[str, Any] = {layout.cache_kwarg: cache, "use_cache": True}
    if layout.logits_to_keep:
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, **kwargs)
    return out.logits[:, -1, :].to(dtype=torch.float32)


def _input_device(model: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except Exception:  # noqa: BLE001
        return model.device
