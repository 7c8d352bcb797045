"""The ``hf:PATH_OR_ID`` policy: a local Hugging Face causal LM, prompted with its own chat template.

AgentTuning evaluates its fine-tuned AgentLM models (Zeng et al., 2023, section 3) by letting them act in the same
environments, through the same ReAct conversation, as the API models that produced the training data. This policy is
that model in-process: the conversation is rendered with the tokenizer's chat template
(``add_generation_prompt=True``), the reply is generated greedily (``temperature=0``, the paper's evaluation
setting) or sampled, and decoded up to the end of the assistant turn.

Batching. A rollout runs many episodes concurrently; running one ``generate`` per episode would leave the
accelerator idle. So :meth:`HFPolicy.act` only tokenises the prompt, puts it on a queue and awaits a future. One
background task per event loop takes up to ``batch_size`` queued prompts (waiting at most ``batch_wait_ms`` for
more once the first arrives), left-pads them into one batch with an attention mask, and runs a single
``model.generate`` in a worker thread so the event loop stays free; requests that arrive meanwhile form the next
batch. Generation never runs twice at once on the same model object (a per-model lock, shared by every policy
that wraps it). Each row's new tokens are cut at the first stop token (the tokenizer's eos, the model's
generation-config eos, and the token the chat template ends an assistant turn with, e.g. ``<|eot_id|>``) and
decoded with ``skip_special_tokens=True``. A failure inside ``generate`` fails that batch's requests with
:class:`~agenttuning.policies.base.PolicyError` and the batcher carries on. Left padding with the mask gives each
row the same positions and attention as running it alone, so a batched greedy reply equals the unbatched one
(tested token for token); floating-point sums over differently shaped batches could in principle flip a near-tie.

Sampling (``temperature > 0``) uses the Gumbel-max trick with the policy's own seeded ``torch.Generator``:
``argmax(logits / T + Gumbel noise)``, restricted to the ``top_p`` nucleus, is an exact sample from the softmax,
without touching torch's global RNG. Draws depend on how requests were batched, so a seed makes a run reproducible
only for the same arrival pattern.

KV reuse (``kv_reuse=True``, the default). Agent prompts repeat: every episode of an environment starts with the
same instructions and context, and each turn is the previous turn's prompt plus the reply and an observation. So
instead of ``model.generate`` over the whole rendered conversation, a batch runs
:func:`agenttuning.policies.decoding.generate_reusing`: each prompt starts from the longest prefix (by token ids)
whose keys/values are in the model's :class:`~agenttuning.policies.kv_cache.PrefixKVStore` (the environment's
shared context, computed by any earlier episode; the previous turn of the same episode), only the rest is
prefilled, then all rows decode together, one batched forward per step; each finished row's prompt and reply are
stored for the next turn. One store per model object, shared by every policy wrapping it, bounded by
``kv_cache_bytes`` (default :data:`~agenttuning.policies.kv_cache.DEFAULT_KV_CACHE_BYTES`, LRU eviction). Greedy
replies equal the ``generate`` path's token for token (tested). Models the loop does not support (sliding-window,
hybrid or mamba caches, flash-attention, an encoder-decoder, generation-config logit processors: see
:func:`~agenttuning.policies.decoding.reuse_unsupported`) fall back to ``generate`` with a log message, and so does
``kv_reuse=False``; :attr:`HFPolicy.kv_reuse` says which path runs, :attr:`HFPolicy.kv_fallback_reason` why not.

Usage: ``prompt_tokens`` is the unpadded prompt length, ``completion_tokens`` the tokens generated up to and
including the stop token (what the model computed), ``requests=1``; ``Reply.finish_reason`` is ``"stop"`` when the
completion ended on a stop token, else ``"length"``. Replies are decoded in the generation thread, off the event
loop. :meth:`count_tokens` is exact: the same rendering as :meth:`act`, so
``count_tokens(messages) == reply.usage.prompt_tokens``. ``stats["prompt_tokens"]`` sums the prompts served and
``stats["cached_tokens"]`` how many of those tokens came from the KV store (0 on the ``generate`` path);
:meth:`HFPolicy.kv_stats` adds the store's size and counters.

Seams for ``agenttuning serve``: :meth:`HFPolicy.act_ids` takes a prompt already encoded (off the event loop), and
:meth:`HFPolicy.with_sampling` makes a policy with other sampling settings on the same model, lock and KV store.

Example (offline, with a tiny random model; any hub id or local folder works the same way)::

    policy = HFPolicy("path/to/model_dir", max_new_tokens=256)        # or HFPolicy(model, tokenizer=tok)
    replies = await asyncio.gather(*(policy.act(m, task=t) for m, t in episodes))   # batched
    policy.stats  # {"batches": ..., "requests": ..., "max_batch": ..., "failed_batches": ...,
                  #  "prompt_tokens": ..., "cached_tokens": ...}
    await policy.aclose()
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agenttuning.policies.base import Policy, PolicyError, Reply
from agenttuning.policies.decoding import KVLayout, generate_reusing, probe_layout, reuse_unsupported
from agenttuning.policies.kv_cache import PrefixKVStore, shared_store
from agenttuning.schema import Task, Turn, Usage, to_openai_messages

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

__all__ = ["HFPolicy", "encode_prompt", "turn_end_token"]

# one lock per model object: generation must never run concurrently on the same weights and KV machinery
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()

_PROBE = "agenttuning-probe-reply-7f3a"  # marker content used to find the template's end-of-turn token


def _model_lock(model: Any) -> threading.Lock:
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


@dataclass
class _Request:
    ids: list[int]
    future: asyncio.Future[Reply]


class HFPolicy(Policy):
    """A Hugging Face causal LM as a policy, batching the requests of concurrent episodes.

    Args:
        model: a hub id or local folder (loaded with ``AutoModelForCausalLM.from_pretrained``), or a loaded model.
        tokenizer: id/folder or tokenizer object; default: loaded from ``model`` (from ``model.name_or_path``
            for a model object). It must have a chat template.
        device: where to run (``"cuda"``, ``"cpu"``, ...); default ``cuda`` when available for a loaded-by-name
            model, and wherever an in-memory model already is. ``"auto"`` loads with ``device_map="auto"``.
        dtype: ``"auto"`` (the checkpoint's dtype; an in-memory model is left as it is), or ``"float32"``,
            ``"bfloat16"``, ``"float16"`` (an in-memory model is converted in place, as ``Module.to`` does).
        max_new_tokens: the longest reply, in tokens.
        temperature, top_p: ``temperature == 0`` is greedy (``top_p`` then unused); else sampling.
        batch_size: most requests in one ``generate``.
        batch_wait_ms: how long the batcher waits for more requests after the first one of a batch.
        max_context_tokens: longest prompt + reply the model may see; default the config's
            ``max_position_embeddings``. A prompt that leaves no room raises PolicyError; otherwise a batch's
            ``max_new_tokens`` is capped so that its longest prompt still fits.
        seed: seed of the sampling generator (``None``: a fresh random seed).
        kv_reuse: start each prompt from the longest stored KV prefix (see the module docstring); off, or for a
            model the loop does not support, every batch is one ``model.generate``.
        kv_cache_bytes: byte budget of the model's shared KV store (``None``: the default, 2 GiB, or what the
            store already has); it applies to every policy on the same model object.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        *,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        device: str | None = None,
        dtype: str = "auto",
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        max_context_tokens: int | None = None,
        seed: int | None = None,
        kv_reuse: bool = True,
        kv_cache_bytes: int | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if batch_wait_ms < 0:
            raise ValueError("batch_wait_ms must be >= 0")
        if kv_cache_bytes is not None and kv_cache_bytes < 0:
            raise ValueError("kv_cache_bytes must be >= 0")
        import torch

        self.name = f"hf:{model}" if isinstance(model, str) else "hf:<in-memory>"
        self.model = _load_model(model, device=device, dtype=dtype)
        self.tokenizer = _load_tokenizer(tokenizer, model)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {self.name} has no chat template: the hf policy renders conversations with it "
                "(pass a tokenizer that has one, or set tokenizer.chat_template)"
            )
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.batch_size = batch_size
        self.batch_wait_ms = float(batch_wait_ms)
        if max_context_tokens is None:
            max_context_tokens = getattr(self.model.config, "max_position_embeddings", None)
        self.max_context_tokens: int | None = max_context_tokens
        self.stop_token_ids: list[int] = self._stop_tokens()
        self.pad_token_id: int = _first_int(self.tokenizer.pad_token_id, self.stop_token_ids[0], 0)
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self._lock = _model_lock(self.model)
        self._thread_state = threading.local()
        #: whether batches run the KV-reusing loop (False: ``model.generate``); the reason when it was asked but
        #: the model is not supported
        self.kv_reuse = False
        self.kv_fallback_reason: str | None = None
        self.kv_store: PrefixKVStore | None = None
        self._kv_joined = False
        #: how the reusing loop prefills: "rows" (one request at a time) or "batched" (for measurements)
        self.kv_prefill = "rows"
        if kv_reuse:
            self._setup_kv_reuse(kv_cache_bytes)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Request] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._closed = False
        #: batching counters: batches run, requests served, the largest batch, batches that raised, prompt tokens
        #: served and how many of them came from the KV store
        self.stats: dict[str, int] = {
            "batches": 0, "requests": 0, "max_batch": 0, "failed_batches": 0, "prompt_tokens": 0, "cached_tokens": 0,
        }  # fmt: skip

    # ----------------------------------------------------------------------------------------------------------
    # Policy contract

    async def act(self, messages: list[Turn], *, task: Task) -> Reply:
        """Render ``messages`` (:meth:`encode`), queue them for the next batch and wait for the reply."""
        if self._closed:
            raise PolicyError(f"{self.name} is closed")
        try:
            ids = self.encode(messages)
        except Exception as e:  # noqa: BLE001 - e.g. a template that rejects the role order
            raise PolicyError(f"{self.name}: the chat template cannot render this conversation: {e}") from e
        return await self.act_ids(ids)

    async def act_ids(self, ids: list[int]) -> Reply:
        """:meth:`act` for a prompt already encoded (e.g. off the event loop, as ``agenttuning serve`` does): queue
        it for the next batch and wait for the reply, whose ``finish_reason`` says why generation ended."""
        if self._closed:
            raise PolicyError(f"{self.name} is closed")
        if self.max_context_tokens is not None and len(ids) >= self.max_context_tokens:
            raise PolicyError(
                f"the prompt is {len(ids)} tokens, which leaves no room to reply within the model's context of "
                f"{self.max_context_tokens} tokens (max_context_tokens)"
            )
        queue = self._ensure_batcher()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Request(ids, future))
        return await future

    def with_sampling(
        self, *, temperature: float, top_p: float, max_new_tokens: int, seed: int | None = None
    ) -> HFPolicy:
        """Another policy on this one's model and tokenizer (so the same generation lock and KV store), with its
        batching, context and KV settings and these sampling settings; its own batcher and counters."""
        if self._closed:
            raise PolicyError(f"{self.name} is closed")
        other = HFPolicy(
            self.model, tokenizer=self.tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, batch_size=self.batch_size, batch_wait_ms=self.batch_wait_ms,
            max_context_tokens=self.max_context_tokens, seed=seed, kv_reuse=self.kv_reuse,
        )  # fmt: skip
        other.name, other.kv_prefill = self.name, self.kv_prefill
        return other

    def count_tokens(self, messages: list[Turn]) -> int:
        """Exact prompt length: the chat-template rendering :meth:`act` sends, generation prompt included."""
        return len(self.encode(messages))

    async def aclose(self) -> None:
        """Stop the batcher, fail what is still queued, wait for a running ``generate``, drop the model."""
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None and self._loop is asyncio.get_running_loop():
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
        if self._queue is not None:
            while not self._queue.empty():
                _fail(self._queue.get_nowait().future, PolicyError(f"{self.name} was closed"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._release_kv_store()
        device = getattr(self.model, "device", None)
        self.model = None  # type: ignore[assignment]
        if device is not None and getattr(device, "type", "") == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ----------------------------------------------------------------------------------------------------------
    # Rendering and generation (public so tests and tools can check them directly)

    def encode(self, messages: list[Turn]) -> list[int]:
        """Token ids of the prompt: :func:`encode_prompt` with this policy's tokenizer."""
        return encode_prompt(self.tokenizer, messages)

    def generate_batch(self, prompts: list[list[int]]) -> list[list[int]]:
        """Each prompt's new tokens, up to and including a stop token, generated as one batch.

        The KV-reusing loop when :attr:`kv_reuse` is on, else one left-padded ``model.generate``. Runs in the
        caller's thread (the batcher calls it in its worker thread) under the model's lock.
        """
        completions, cached = self._generate(prompts)
        self._thread_state.cached = cached  # for the batcher's stats, read back in this same thread
        return completions

    def kv_stats(self) -> dict[str, Any]:
        """Whether KV reuse runs, the prompt tokens served and cached so far, and the shared store's figures."""
        out: dict[str, Any] = {
            "kv_reuse": self.kv_reuse,
            "prompt_tokens": self.stats["prompt_tokens"],
            "cached_tokens": self.stats["cached_tokens"],
        }
        if self.kv_store is not None:
            out["store"] = self.kv_store.stats()
        return out

    def _run_batch(self, prompts: list[list[int]]) -> tuple[list[Reply], int]:
        """The batcher's call, in the worker thread: :meth:`generate_batch`, each completion decoded there (off the
        event loop) into a Reply, and how many prompt tokens came from the KV store."""
        self._thread_state.cached = None
        completions = self.generate_batch(prompts)  # the override point (tests replace it to inject a failure)
        cached = getattr(self._thread_state, "cached", None)
        replies = [
            Reply(
                text=self.decode(c),
                usage=Usage(prompt_tokens=len(ids), completion_tokens=len(c), requests=1),
                finish_reason="stop" if c and c[-1] in self.stop_token_ids else "length",
            )
            for ids, c in zip(prompts, completions, strict=True)
        ]
        return replies, sum(cached) if cached is not None else 0

    def _generate(self, prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
        """``(completions, cached)``: :meth:`generate_batch`'s rows and each prompt's tokens served from the store."""
        import torch

        width = max(len(p) for p in prompts)
        max_new = self.max_new_tokens
        if self.max_context_tokens is not None:
            max_new = max(1, min(max_new, self.max_context_tokens - width))
        sampler = _GumbelSampler(self.temperature, self.top_p, self._generator) if self.temperature > 0 else None
        if not self.kv_reuse or any(not p for p in prompts):
            return self._generate_hf(prompts, width, max_new, sampler), [0] * len(prompts)
        assert self.kv_store is not None
        with self._lock, torch.inference_mode():
            layout = self._current_layout()
            return generate_reusing(
                self.model, prompts, self.kv_store, layout, max_new=max_new, stop_ids=self.stop_token_ids,
                pad_id=self.pad_token_id, sampler=sampler, prefill=self.kv_prefill,
            )  # fmt: skip

    def _generate_hf(
        self, prompts: list[list[int]], width: int, max_new: int, sampler: _GumbelSampler | None
    ) -> list[list[int]]:
        """One left-padded ``model.generate`` over ``prompts`` (the path without KV reuse)."""
        import torch

        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if prompt:
                input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                attention_mask[row, width - len(prompt) :] = 1
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "do_sample": False,  # sampling, when asked for, is the Gumbel-max processor below
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": self.pad_token_id,
        }
        if sampler is not None:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        with self._lock, torch.inference_mode():
            device = self.model.device
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
            )
        stops = set(self.stop_token_ids)
        rows = []
        for new in out[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
            rows.append(new[:cut])
        return rows

    def decode(self, completion: list[int]) -> str:
        """The reply text of a completion: without its stop token and other special tokens."""
        if completion and completion[-1] in self.stop_token_ids:
            completion = completion[:-1]
        return self.tokenizer.decode(completion, skip_special_tokens=True)

    # ----------------------------------------------------------------------------------------------------------
    # The batcher

    def _ensure_batcher(self) -> asyncio.Queue[_Request]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._batcher is None or self._batcher.done():
            if self._loop is loop and self._batcher is not None and self._batcher.done():
                log.error("%s: the batcher stopped unexpectedly; restarting it", self.name)
            if self._loop is not loop or self._queue is None:
                self._queue = asyncio.Queue()
            self._loop = loop
            self._batcher = loop.create_task(self._run_batcher(self._queue), name=f"{self.name} batcher")
        assert self._queue is not None
        return self._queue

    async def _run_batcher(self, queue: asyncio.Queue[_Request]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(queue)
            batch = [r for r in batch if not r.future.done()]  # callers that gave up (cancelled, timed out)
            if not batch:
                continue
            try:
                replies, cached = await loop.run_in_executor(self._executor, self._run_batch, [r.ids for r in batch])
            except asyncio.CancelledError:
                for r in batch:
                    _fail(r.future, PolicyError(f"{self.name} was closed while generating"))
                raise
            except Exception as e:  # noqa: BLE001 - any failure belongs to this batch only
                self.stats["failed_batches"] += 1
                log.warning("%s: generate failed for a batch of %d: %r", self.name, len(batch), e)
                for r in batch:
                    error = PolicyError(f"{self.name}: generation failed: {type(e).__name__}: {e}")
                    error.__cause__ = e
                    _fail(r.future, error)
                continue
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
            self.stats["prompt_tokens"] += sum(len(r.ids) for r in batch)
            self.stats["cached_tokens"] += cached
            for r, reply in zip(batch, replies, strict=True):
                if not r.future.done():
                    r.future.set_result(reply)

    async def _collect(self, queue: asyncio.Queue[_Request]) -> list[_Request]:
        """The next batch: the first queued request, then up to ``batch_size`` in all within ``batch_wait_ms``."""
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_ms / 1000
        while len(batch) < self.batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    # ----------------------------------------------------------------------------------------------------------
    # KV reuse

    def _setup_kv_reuse(self, max_bytes: int | None) -> None:
        """Join the model's shared KV store, or record why the model needs the ``generate`` path."""
        reason = reuse_unsupported(self.model)
        if reason is None:
            store = shared_store(self.model, max_bytes)
            try:
                if not self._layout_current(store):  # probed already: no need to wait for a running batch
                    with self._lock:
                        self._probe(store)
            except Exception as e:  # noqa: BLE001 - whatever the probe trips on, generate still works
                reason = f"the KV layout probe failed: {type(e).__name__}: {e}"
        if reason is not None:
            self.kv_fallback_reason = reason
            log.info("%s: KV reuse off, generating with model.generate: %s", self.name, reason)
            return
        store.users += 1
        self.kv_store, self.kv_reuse, self._kv_joined = store, True, True

    def _layout_current(self, store: PrefixKVStore) -> bool:
        """Whether the store's probed layout is for the model's present dtype and device."""
        first = next(self.model.parameters())
        return store.layout is not None and store.layout[0] == (first.dtype, str(first.device))

    def _probe(self, store: PrefixKVStore) -> KVLayout:
        """The store's KV layout, probed again when the model's dtype or device changed since (under the lock)."""
        if not self._layout_current(store):
            first = next(self.model.parameters())
            store.layout = ((first.dtype, str(first.device)), probe_layout(self.model, self.pad_token_id))
        return store.layout[1]

    def _current_layout(self) -> KVLayout:
        assert self.kv_store is not None
        return self._probe(self.kv_store)

    def _release_kv_store(self) -> None:
        """Leave the shared store; the last policy to leave empties it (the model object may live on)."""
        if self.kv_store is not None and self._kv_joined:
            self._kv_joined = False
            self.kv_store.users -= 1
            if self.kv_store.users <= 0:
                self.kv_store.clear()

    # ----------------------------------------------------------------------------------------------------------
    # Stop tokens

    def _stop_tokens(self) -> list[int]:
        """eos of the tokenizer and of the model's generation config, and the template's end-of-turn token."""
        stops: list[int] = []
        candidates: list[Any] = [self.tokenizer.eos_token_id]
        generation_config = getattr(self.model, "generation_config", None)
        eos = getattr(generation_config, "eos_token_id", None)
        candidates += eos if isinstance(eos, (list, tuple)) else [eos]
        candidates.append(turn_end_token(self.tokenizer))
        for c in candidates:
            if isinstance(c, int) and c >= 0 and c not in stops:
                stops.append(c)
        if not stops:
            raise ValueError(f"{self.name}: no eos or end-of-turn token found; generation could never stop")
        return stops


class _GumbelSampler:
    """Logits processor turning greedy decoding into sampling: ``argmax(logits / T + Gumbel) ~ softmax(logits / T)``.

    With ``top_p < 1`` the logits outside the nucleus (the smallest set of top tokens whose probability reaches
    ``top_p``; the top token always stays) are set to ``-inf`` first. Noise comes from ``generator`` (on CPU, so
    draws do not depend on the device).
    """

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator) -> None:
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            outside = probs.cumsum(dim=-1) - probs >= self.top_p  # the mass before this token already reached p
            sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        uniform = torch.rand(logits.shape, generator=self.generator, dtype=torch.float32).to(logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1 - 1e-7)))
        return logits + gumbel


# --------------------------------------------------------------------------------------------------------------
# Rendering (shared with agenttuning serve's vLLM backend, which renders prompts exactly as this policy does)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[Turn]) -> list[int]:
    """Token ids of a prompt: the chat template with the assistant generation prompt."""
    text = tokenizer.apply_chat_template(to_openai_messages(messages), tokenize=False, add_generation_prompt=True)
    # the template already holds any bos token: don't let the tokenizer add another
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def turn_end_token(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template puts right after an assistant message's content, if any (e.g.
    ``<|eot_id|>``): generation stops there even when the model's generation config does not list it."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # noqa: BLE001 - templates may reject the probe (e.g. a required system turn)
        return None
    at = text.rfind(_PROBE)
    if at < 0:
        return None
    tail = tokenizer(text[at + len(_PROBE) :], add_special_tokens=False)["input_ids"]
    if not tail:
        return None
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    token = added.get(tail[0])
    is_special = (token is not None and getattr(token, "special", False)) or tail[0] in set(tokenizer.all_special_ids)
    return tail[0] if is_special else None


# --------------------------------------------------------------------------------------------------------------
# Loading


def _load_model(model: Any, *, device: str | None, dtype: str) -> PreTrainedModel:
    import torch

    torch_dtype = _torch_dtype(dtype)
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM

        from agenttuning.models import resolve_model

        model = resolve_model(model)  # a .gguf file or alias: its converted folder (ModelSourceError as it is)
        options: dict[str, Any] = {"dtype": torch_dtype}
        if device == "auto":  # spread a model too big for one device over all of them (needs accelerate)
            options["device_map"] = "auto"
        try:
            loaded = AutoModelForCausalLM.from_pretrained(model, **options)
        except Exception as e:  # noqa: BLE001 - name the model in the error
            raise ValueError(f"could not load a causal LM from {model!r}: {type(e).__name__}: {e}") from e
        if device != "auto":
            loaded = loaded.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        loaded = model
        if torch_dtype != "auto":
            loaded = loaded.to(torch_dtype)
        if device is not None:
            loaded = loaded.to(device)
    return loaded.eval()


def _load_tokenizer(tokenizer: Any, model: Any) -> PreTrainedTokenizerBase:
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    source = tokenizer if tokenizer is not None else model if isinstance(model, str) else None
    if source is None:
        source = getattr(model, "name_or_path", "") or None
    if source is None:
        raise ValueError("pass tokenizer= when the model is an in-memory object without a name_or_path")
    from transformers import AutoTokenizer

    from agenttuning.models import resolve_model

    source = resolve_model(source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - name the source in the error
        raise ValueError(f"could not load a tokenizer from {source!r}: {type(e).__name__}: {e}") from e


def _torch_dtype(dtype: Any) -> Any:
    if dtype == "auto" or not isinstance(dtype, str):
        return dtype
    import torch

    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return value


def _first_int(*values: Any) -> int:
    return next(v for v in values if isinstance(v, int))


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
