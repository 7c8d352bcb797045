"""Generation backends behind ``agenttuning serve``: :class:`HFBackend` (always available) and :class:`VLLMBackend`.

A backend turns one request (turns + :class:`Sampling`) into a :class:`~agenttuning.serve.protocol.Completion`.

``HFBackend`` reuses :class:`~agenttuning.policies.hf.HFPolicy`, so the server renders, batches, stops and decodes
exactly as the ``hf:`` policy does in a rollout (same ids, same greedy text). An HFPolicy has *fixed* sampling
settings, so the backend keeps one policy per distinct ``(temperature, top_p, max_tokens)`` -- each made from the
backend's template policy by :meth:`HFPolicy.with_sampling`, so all wrap the same model object (and hence share its
generation lock) -- made lazily and kept in a small LRU of idle ones. Requests go in through
:meth:`HFPolicy.act_ids` (the prompt already encoded).
Concurrent requests with the same settings (the usual case: a rollout's episodes all send the same settings)
land in the same policy and are batched into shared ``generate`` calls; requests with different settings
run in separate batches, one after the other on the model. Greedy requests (``temperature == 0`` or
``top_p == 0``) share one key whatever their ``top_p``/``seed``. A *seeded* sampled request gets a policy of its
own, seeded with its seed and closed afterwards, so the same request with the same seed gives the same text
(it is then never batched with others: HFPolicy draws depend on the batch).

KV reuse (``kv_reuse=True``, the default; see :mod:`agenttuning.policies.hf`): all the backend's policies wrap one
model object and hence share its one :class:`~agenttuning.policies.kv_cache.PrefixKVStore` (budget
``kv_cache_bytes``): a conversation's earlier turns computed under one sampling setting serve the next request
under another. :meth:`HFBackend.stats` reports ``prompt_tokens``, ``cached_tokens`` (of those, served from the
store) and the store's figures under ``kv_cache``.

``finish_reason`` is exact: HFPolicy's ``Reply.finish_reason`` says whether a completion ended on a stop token
(``"stop"``) or ran out of new tokens (``"length"``; also when the context window capped the request's
``max_tokens``). ``stop`` strings are applied to the decoded text afterwards (HFPolicy has no
per-request stopping criteria), so generation still runs to a stop token or ``max_tokens``: ``completion_tokens``
counts what the model generated.

Doing better needs a small change in ``hf.py``: per-request ``max_new_tokens``/``temperature``/``top_p``/seeded
generator and stop strings carried by each queued request, with ``generate_batch`` taking the batch's largest
``max_new_tokens``, a per-row Gumbel sampler and a ``StoppingCriteria`` per row, then cutting each row at its own
limit. Mixed-setting requests could then share batches.

CPU work stays off the event loop (a 10 MB prompt tokenised on it once blocked ``/health`` for 27 s): both backends
render and tokenise prompts in a small thread pool of their own, :class:`HFBackend` hands the ids to its policy's
batcher as they are (no second encoding on the loop), and HFPolicy decodes replies in its generation thread.

``VLLMBackend`` (used when ``vllm`` is importable and the model is given by name/path; untested here, vllm is a
GPU-only dependency) renders the same chat template with the Hugging Face tokenizer, hands the token ids to
``vllm.AsyncLLMEngine`` with the request's ``SamplingParams`` (vLLM batches continuously and applies stop strings
natively) and reports vLLM's own finish reason and token counts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agenttuning.policies.base import PolicyError
from agenttuning.policies.hf import HFPolicy, encode_prompt, turn_end_token
from agenttuning.schema import Turn
from agenttuning.serve.protocol import APIError, Completion

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

__all__ = ["HFBackend", "Sampling", "VLLMBackend", "vllm_available"]

_STAT_KEYS = ("batches", "requests", "max_batch", "failed_batches", "prompt_tokens", "cached_tokens")
#: threads rendering and tokenising prompts: a few, so one long prompt does not hold up every other request, yet
#: bounded, so a burst of requests cannot take the cores from generation
_ENCODE_THREADS = 2


@dataclass(frozen=True)
class Sampling:
    """One request's generation settings, defaults already filled in."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0


def vllm_available() -> bool:
    """Whether ``import vllm`` would work (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class _OffLoop:
    """A small thread pool for a backend's CPU work (rendering, tokenising), awaited from the event loop."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=_ENCODE_THREADS, thread_name_prefix="serve-encode")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face (HFPolicy)


class HFBackend:
    """Local generation with HFPolicy, one policy per distinct sampling setting (see the module docstring).

    ``policy`` is the template: every policy serving requests is made from it by :meth:`HFPolicy.with_sampling`
    (its model, tokenizer, batching, context and KV settings; each request's sampling settings), and it renders
    every prompt. The backend owns it from here and closes it in :meth:`aclose`.
    """

    kind = "hf"

    def __init__(self, policy: HFPolicy, *, max_policies: int = 8) -> None:
        self._template = policy
        self.model, self.tokenizer = policy.model, policy.tokenizer
        self.kv_reuse, self.kv_store = policy.kv_reuse, policy.kv_store  # every policy made joins the same store
        self.max_context_tokens = policy.max_context_tokens
        self.max_policies = max(1, max_policies)
        self._policies: OrderedDict[tuple, HFPolicy] = OrderedDict()
        self._inflight: dict[tuple, int] = {}
        self._retired = dict.fromkeys(_STAT_KEYS, 0)  # counters of policies already closed
        self._encoder = _OffLoop()
        self._closed = False

    def encode(self, turns: list[Turn]) -> list[int]:
        """The prompt ids (HFPolicy's rendering); 400 when the template rejects it or it fills the context.

        CPU work in proportion to the prompt: :meth:`complete` runs it off the event loop."""
        try:
            ids = self._template.encode(turns)
        except Exception as e:  # e.g. a template that rejects the role order
            raise APIError(400, f"the chat template cannot render these messages: {e}", param="messages") from e
        if self.max_context_tokens is not None and len(ids) >= self.max_context_tokens:
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens, which leaves no room to reply within the model's context of "
                f"{self.max_context_tokens} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        return ids

    async def complete(self, turns: list[Turn], sampling: Sampling) -> Completion:
        """Generate one reply; :class:`APIError` 400 for a bad prompt, 500 when generation fails."""
        if self._closed:
            raise APIError(503, "the server is shutting down", type="server_error")
        # a bad prompt is the client's error (400), not a generation failure
        ids: list[int] = await self._encoder.run(self.encode, turns)
        if sampling.greedy:
            key: tuple = (0.0, 1.0, sampling.max_tokens)
        else:
            key = (float(sampling.temperature), float(sampling.top_p), sampling.max_tokens)
        one_shot = not sampling.greedy and sampling.seed is not None
        policy = self._new_policy(key, seed=sampling.seed) if one_shot else self._policy(key)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            reply = await policy.act_ids(ids)
        except PolicyError as e:
            raise APIError(500, str(e), type="server_error") from e
        finally:
            self._inflight[key] -= 1
            if one_shot:
                await self._retire(policy)
            else:
                await self._evict_idle()
        finish = reply.finish_reason or "length"
        return Completion(reply.text, finish, reply.usage.prompt_tokens, reply.usage.completion_tokens)

    def stats(self) -> dict[str, Any]:
        """Batching and prompt-token counters summed over every policy so far (``max_batch``: the largest), live
        policies, and the shared KV store's figures (``kv_cache``; absent when KV reuse is off)."""
        out: dict[str, Any] = dict(self._retired)
        for policy in self._policies.values():
            for k in _STAT_KEYS:
                out[k] = max(out[k], policy.stats[k]) if k == "max_batch" else out[k] + policy.stats[k]
        out["policies"] = len(self._policies)
        out["kv_reuse"] = self.kv_reuse
        if self.kv_store is not None:
            out["kv_cache"] = self.kv_store.stats()
        return out

    async def aclose(self) -> None:
        self._closed = True
        self._encoder.close()
        policies, self._policies = list(self._policies.values()), OrderedDict()
        for policy in policies:
            await self._retire(policy)
        await self._template.aclose()  # last: it leaves the shared KV store after the others

    # -- policies ---------------------------------------------------------------------------------------------------
    def _new_policy(self, key: tuple, *, seed: int | None = None) -> HFPolicy:
        temperature, top_p, max_tokens = key
        return self._template.with_sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_tokens, seed=seed)

    def _policy(self, key: tuple) -> HFPolicy:
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = self._new_policy(key)
        self._policies.move_to_end(key)
        return policy

    async def _evict_idle(self) -> None:
        """Close the least recently used idle policies while there are more than ``max_policies``."""
        for key in list(self._policies):
            if len(self._policies) <= self.max_policies:
                return
            if self._inflight.get(key, 0) == 0:
                await self._retire(self._policies.pop(key))
                self._inflight.pop(key, None)

    async def _retire(self, policy: HFPolicy) -> None:
        for k in _STAT_KEYS:
            v = policy.stats[k]
            self._retired[k] = max(self._retired[k], v) if k == "max_batch" else self._retired[k] + v
        policy.stats = dict.fromkeys(_STAT_KEYS, 0)
        await policy.aclose()


# ---------------------------------------------------------------------------------------------------------------
# vLLM


class VLLMBackend:
    """Generation with ``vllm.AsyncLLMEngine`` (continuous batching); same prompt rendering as :class:`HFBackend`.

    ``engine_options`` go to ``vllm.AsyncEngineArgs`` (e.g. ``tensor_parallel_size``, ``gpu_memory_utilization``).
    Not exercised by the CPU test suite.
    """

    kind = "vllm"

    def __init__(
        self,
        model: str,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        *,
        dtype: str = "auto",
        max_context_tokens: int | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        tok = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else None
        self.tokenizer = tok or AutoTokenizer.from_pretrained(tokenizer or model)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {model} has no chat template")
        args: dict[str, Any] = {"model": model, "dtype": dtype, **(engine_options or {})}
        if isinstance(tokenizer, str):
            args["tokenizer"] = tokenizer
        if max_context_tokens is not None:
            args["max_model_len"] = max_context_tokens
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**args))
        model_config = getattr(self.engine, "model_config", None)
        self.max_context_tokens = max_context_tokens or getattr(model_config, "max_model_len", None)
        # the end-of-turn token of the chat template (e.g. <|eot_id|>), found exactly as HFPolicy finds it, in case
        # the checkpoint's generation_config.json does not list it among its eos ids
        stops = [self.tokenizer.eos_token_id]
        try:
            stops.append(turn_end_token(self.tokenizer))
        except Exception as e:  # noqa: BLE001 - best effort: vLLM still stops on the generation config's eos
            log.debug("no end-of-turn token found: %r", e)
        self.stop_token_ids = [t for t in dict.fromkeys(stops) if isinstance(t, int)]
        self._stats = {"requests": 0, "failed_requests": 0}
        self._encoder = _OffLoop()

    def encode(self, turns: list[Turn]) -> list[int]:
        try:
            ids = encode_prompt(self.tokenizer, turns)  # rendered exactly as the hf: policy renders it
        except Exception as e:
            raise APIError(400, f"the chat template cannot render these messages: {e}", param="messages") from e
        if self.max_context_tokens is not None and len(ids) >= self.max_context_tokens:
            raise APIError(
                400, f"the prompt is {len(ids)} tokens, which leaves no room within {self.max_context_tokens}",
                param="messages", code="context_length_exceeded",
            )  # fmt: skip
        return ids

    async def complete(self, turns: list[Turn], sampling: Sampling) -> Completion:
        from vllm import SamplingParams

        ids: list[int] = await self._encoder.run(self.encode, turns)
        max_tokens = sampling.max_tokens
        if self.max_context_tokens is not None:
            max_tokens = max(1, min(max_tokens, self.max_context_tokens - len(ids)))
        params = SamplingParams(
            n=1,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            max_tokens=max_tokens,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            stop_token_ids=self.stop_token_ids,
            skip_special_tokens=True,
        )
        self._stats["requests"] += 1
        final = None
        try:
            async for output in self.engine.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
                final = output
        except asyncio.CancelledError:
            raise
        except ValueError as e:  # vLLM's verdict on the request itself (e.g. longer than max_model_len)
            self._stats["failed_requests"] += 1
            raise APIError(400, f"vllm rejected the request: {e}") from e
        except Exception as e:
            self._stats["failed_requests"] += 1
            raise APIError(500, f"vllm generation failed: {type(e).__name__}: {e}", type="server_error") from e
        if final is None or not final.outputs:
            self._stats["failed_requests"] += 1
            raise APIError(500, "vllm returned no output", type="server_error")
        out = final.outputs[0]
        finish = "length" if out.finish_reason == "length" else "stop"
        return Completion(out.text, finish, len(ids), len(out.token_ids))

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    async def aclose(self) -> None:
        self._encoder.close()
        for name in ("shutdown", "shutdown_background_loop"):
            stop = getattr(self.engine, name, None)
            if callable(stop):
                result = stop()
                if asyncio.iscoroutine(result):
                    await result
                return
