"""A store of computed key/value (KV) caches, keyed by token ids and looked up by longest common prefix.

An agent's prompts repeat themselves: every episode of an environment starts with the same instructions, the same
"Ok." turn and (in db-v1) the same database schema, and each turn of an episode is the previous turn's prompt plus
the reply and a new observation. A causal LM's keys and values for a token depend only on the tokens before it, so
the KV of a prompt's first ``k`` tokens, computed once, serves every later prompt that starts with the same ``k``
token ids. :class:`PrefixKVStore` keeps such KV; :mod:`agenttuning.policies.decoding` reads and fills it.

Structure: a radix tree. Each node holds an edge of token ids and the KV of exactly those tokens (one tensor whose
dimension ``-2`` indexes tokens; the decoding loop uses ``[layers, 2, kv_heads, tokens, head_dim]``); a path from
the root spells a stored sequence. Why a tree rather than a list of whole sequences with a longest-common-prefix
scan: the shared part of the prompts (about 850 tokens of db-v1's 1,200-token first prompt, every turn's history
within an episode) is stored *once* instead of once per episode and turn, so a byte budget holds several times
more episodes; inserting a sequence copies only its tokens that are not stored yet (a new turn adds its reply and
observation, not the whole conversation again); and a lookup walks one path instead of comparing against every
entry. A lookup returns the stored tensors along the matched path (the last one sliced to the matched length); the
caller copies them into its own buffer, so no request ever writes into the store.

Rules:

* **Match by token ids, longest common prefix.** A conversation re-rendered by the chat template may tokenise the
  previous reply differently from the ids that were generated; the match simply stops at the first differing id
  and only that much is reused.
* **Stored tensors are never mutated.** Inserting clones the new tokens' KV out of the caller's buffer; splitting
  a node (a new sequence diverging inside an edge) makes two new tensors and drops the old one, which a reader may
  still hold unchanged.
* **Byte budget, LRU eviction.** ``max_bytes`` bounds the sum of the stored tensors' sizes. Every lookup and insert
  marks the nodes of its path as used now (a parent is never older than its children); while over budget, the
  least recently used *leaf* is dropped (a prefix shared by live episodes stays as long as any of them is used).
* **Validity.** KV depends on the weights, dtype and device: :meth:`PrefixKVStore.validate` takes a key of those
  (the decoding loop passes dtype, device and the parameters' identities, storages and in-place version
  counters, so an optimizer step, ``load_state_dict`` or ``.to()`` on the same model object is noticed) and clears the store when it changes.
* **Thread-safe** (one lock); generation runs in worker threads.

:func:`shared_store` gives the one store of a model object (a weak mapping, like the per-model generation lock of
:mod:`agenttuning.policies.hf`): every policy wrapping the same model -- ``agenttuning serve`` keeps one per sampling
setting -- reads and fills the same store.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_KV_CACHE_BYTES", "PrefixKVStore", "shared_store"]

#: default byte budget of a model's store: 2 GiB (about 46,000 tokens of SmolLM2-135M's KV in float32, 4,096 of a
#: Llama-2-7B's in bfloat16)
DEFAULT_KV_CACHE_BYTES = 2 << 30

_STORES: weakref.WeakKeyDictionary[Any, PrefixKVStore] = weakref.WeakKeyDictionary()
_STORES_GUARD = threading.Lock()


class _Node:
    __slots__ = ("children", "ids", "kv", "last_used", "nbytes", "parent")

    def __init__(self, ids: tuple[int, ...], kv: torch.Tensor | None, parent: _Node | None) -> None:
        self.ids = ids
        self.kv = kv
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.last_used = 0
        self.nbytes = 0 if kv is None else kv.numel() * kv.element_size()


class PrefixKVStore:
    """KV caches of token sequences in a radix tree, bounded by ``max_bytes`` (see the module docstring).

    Example::

        store = PrefixKVStore(max_bytes=1 << 30)
        store.insert(ids, lambda start, end: buffer[..., start:end, :].clone())   # KV of ids[start:end]
        n, parts = store.match(other_ids)          # other_ids[:n] is stored; torch.cat(parts, -2) is its KV
    """

    def __init__(self, max_bytes: int = DEFAULT_KV_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self._max_bytes = int(max_bytes)
        self._root = _Node((), None, None)
        self._lock = threading.RLock()
        self._clock = itertools.count(1)
        self._bytes = 0
        self._tokens = 0
        self._nodes = 0
        self._key: Any = None
        #: how many live policies use this store (:func:`shared_store` users); the last one to leave clears it
        self.users = 0
        #: layout facts of the model this store serves, filled by the decoding loop's probe (None: not probed)
        self.layout: Any = None
        self.counters = {"lookups": 0, "hit_tokens": 0, "inserted_tokens": 0, "evicted_tokens": 0, "clears": 0}

    # -- budget ------------------------------------------------------------------------------------------------------
    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if value < 0:
            raise ValueError("max_bytes must be >= 0")
        with self._lock:
            self._max_bytes = int(value)
            self._evict()

    @property
    def nbytes(self) -> int:
        """Bytes of KV stored now."""
        return self._bytes

    @property
    def tokens(self) -> int:
        """Tokens whose KV is stored now (each stored once, however many sequences share it)."""
        return self._tokens

    # -- lookup and insert ---------------------------------------------------------------------------------------------
    def match(self, ids: Sequence[int]) -> tuple[int, list[torch.Tensor]]:
        """``(n, parts)``: ``ids[:n]`` is the longest stored prefix of ``ids``; ``parts`` its KV, in order.

        The parts are the store's own tensors (or slices of them): read them, never write into them.
        """
        ids = tuple(ids)
        with self._lock:
            self.counters["lookups"] += 1
            node, n, parts = self._root, 0, []
            now = next(self._clock)
            while n < len(ids):
                child = node.children.get(ids[n])
                if child is None:
                    break
                k = _common_prefix(child.ids, ids, n)
                child.last_used = now
                assert child.kv is not None
                parts.append(child.kv if k == len(child.ids) else child.kv[..., :k, :])
                n += k
                if k < len(child.ids):
                    break
                node = child
            self.counters["hit_tokens"] += n
            return n, parts

    def insert(self, ids: Sequence[int], kv: Callable[[int, int], torch.Tensor]) -> int:
        """Store the KV of ``ids``; ``kv(start, end)`` must return a *new* tensor with the KV of ``ids[start:end]``.

        Only the tokens not stored yet are asked for. Returns how many tokens were added. The budget is enforced
        afterwards (a sequence bigger than the whole budget is evicted at once).
        """
        ids = tuple(ids)
        with self._lock:
            node, n = self._root, 0
            now = next(self._clock)
            while n < len(ids):
                child = node.children.get(ids[n])
                if child is None:
                    break
                k = _common_prefix(child.ids, ids, n)
                if k < len(child.ids):
                    if n + k == len(ids):  # ids end inside this edge: already stored
                        child.last_used = now
                        return 0
                    child = self._split(child, k)
                child.last_used = now
                n += k
                node = child
            if n == len(ids):
                return 0
            tensor = kv(n, len(ids))
            if tensor.shape[-2] != len(ids) - n:
                raise ValueError(f"kv({n}, {len(ids)}) returned {tensor.shape[-2]} tokens, not {len(ids) - n}")
            leaf = _Node(ids[n:], tensor, node)
            leaf.last_used = now
            node.children[ids[n]] = leaf
            self._account(leaf, +1)
            self.counters["inserted_tokens"] += len(leaf.ids)
            self._evict()
            return len(ids) - n

    def clear(self) -> None:
        """Drop everything stored."""
        with self._lock:
            self._root = _Node((), None, None)
            self._bytes = self._tokens = self._nodes = 0
            self.counters["clears"] += 1

    def validate(self, key: Any) -> None:
        """Clear the store when ``key`` (what the stored KV depends on: weights, dtype, device) has changed."""
        with self._lock:
            if key != self._key:
                if self._key is not None and self._nodes:
                    self.clear()
                self._key = key

    def stats(self) -> dict[str, int]:
        """Size now (``bytes``, ``tokens``, ``nodes``, ``max_bytes``) and counters since creation."""
        with self._lock:
            return {"bytes": self._bytes, "tokens": self._tokens, "nodes": self._nodes,
                    "max_bytes": self._max_bytes, **self.counters}  # fmt: skip

    def sequences(self) -> list[tuple[int, ...]]:
        """Every stored root-to-leaf sequence (for tests and debugging)."""
        with self._lock:
            out: list[tuple[int, ...]] = []
            stack = [(self._root, ())]
            while stack:
                node, prefix = stack.pop()
                seq = prefix + node.ids
                if not node.children and node is not self._root:
                    out.append(seq)
                stack.extend((c, seq) for c in node.children.values())
            return sorted(out)

    # -- internals -----------------------------------------------------------------------------------------------------
    def _split(self, node: _Node, k: int) -> _Node:
        """Cut ``node``'s edge after ``k`` tokens; return the new upper node (``node`` becomes its only child).

        Both halves get their own copies, so dropping one later frees its bytes (a view would keep the whole
        original alive) and the original tensor, which a reader may hold, is left as it was.
        """
        assert node.kv is not None and node.parent is not None and 0 < k < len(node.ids)
        self._account(node, -1)
        upper = _Node(node.ids[:k], node.kv[..., :k, :].clone(), node.parent)
        upper.last_used = node.last_used
        lower_kv = node.kv[..., k:, :].clone()
        node.parent.children[node.ids[0]] = upper
        node.ids, node.kv, node.parent = node.ids[k:], lower_kv, upper
        node.nbytes = lower_kv.numel() * lower_kv.element_size()
        upper.children[node.ids[0]] = node
        self._account(upper, +1)
        self._account(node, +1)
        return upper

    def _account(self, node: _Node, sign: int) -> None:
        self._bytes += sign * node.nbytes
        self._tokens += sign * len(node.ids)
        self._nodes += sign

    def _evict(self) -> None:
        """Drop least recently used leaves until the stored bytes fit the budget."""
        while self._bytes > self._max_bytes and self._nodes:
            leaf = min(self._leaves(), key=lambda nd: nd.last_used)
            assert leaf.parent is not None
            del leaf.parent.children[leaf.ids[0]]
            self._account(leaf, -1)
            self.counters["evicted_tokens"] += len(leaf.ids)
            leaf.parent = None

    def _leaves(self) -> list[_Node]:
        out, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out


def _common_prefix(edge: tuple[int, ...], ids: tuple[int, ...], start: int) -> int:
    """How many leading tokens of ``edge`` equal ``ids[start:]``."""
    n = min(len(edge), len(ids) - start)
    if edge[:n] == ids[start : start + n]:
        return n
    lo, hi = 0, n  # edge[:lo] matches, edge[:hi] does not: bisect on slice equality (C-speed comparisons)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if edge[:mid] == ids[start : start + mid]:
            lo = mid
        else:
            hi = mid
    return lo


def shared_store(model: Any, max_bytes: int | None = None) -> PrefixKVStore:
    """The store of ``model`` (one per model object, made on first use); ``max_bytes``, when given, sets its budget."""
    with _STORES_GUARD:
        store = _STORES.get(model)
        if store is None:
            store = _STORES[model] = PrefixKVStore(DEFAULT_KV_CACHE_BYTES if max_bytes is None else max_bytes)
        elif max_bytes is not None:
            store.max_bytes = max_bytes
        return store
