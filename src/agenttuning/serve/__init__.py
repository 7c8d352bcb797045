"""``agenttuning serve MODEL``: an OpenAI-compatible chat-completions server over a local model.

AgentTuning (Zeng et al., 2023, section 3) evaluates its AgentLM models through the same chat interface as the API
models; serving a fine-tuned checkpoint behind OpenAI's API lets any OpenAI client -- the ``openai:`` policy of our
rollouts, lm-eval harnesses, other agent frameworks -- use it unchanged.

- ``POST /v1/chat/completions``: ``model``, ``messages`` (roles system/developer/user/assistant, text content),
  ``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``stop`` (str or list: the text is cut
  before the first stop sequence, ``finish_reason`` "stop"), ``seed``, ``n`` (1 only), ``stream``; the answer has
  ``finish_reason`` "stop" (end of turn or a stop sequence) or "length" (``max_tokens`` reached) and exact
  ``usage`` (``prompt_tokens`` is the chat-template rendering's length, as :class:`~agenttuning.policies.hf.HFPolicy`
  counts it). ``stream: true`` is answered as server-sent ``chat.completion.chunk`` events ending in
  ``data: [DONE]``, but the text is generated in one go first (batching and streaming token by token do not mix in
  HFPolicy), so a stream has the role chunk, one content chunk, the finish chunk (and the usage chunk with
  ``stream_options.include_usage``).
- ``GET /v1/models`` lists the served name; ``GET /v1/stats`` the backend's batching counters; ``GET /health``.
- Errors: OpenAI's ``{"error": {...}}`` bodies; 400 for invalid or unsupported requests (every field's range is
  validated: a user's mistake is never a 500), 404 for another model name or route, 413 for a body over
  ``max_body_bytes`` (4 MiB; refused before it is read), 400 ``context_length_exceeded`` for a prompt over
  ``max_prompt_chars`` (checked before tokenising) or over the model's context (after), 500 when generation fails.
  Tokenising runs off the event loop, so ``/health`` answers while a long prompt is encoded.

Backends (:mod:`agenttuning.serve.backends`): the Hugging Face one reuses HFPolicy's batcher (concurrent requests
share ``generate`` calls); when ``vllm`` is importable and the model is given by name/path, ``vllm.AsyncLLMEngine``
serves the same endpoints instead (``backend="hf"`` forces the former).

Example::

    from agenttuning.serve import create_app, serve
    serve("runs/agentlm-7b/model", port=8000, served_name="agentlm")     # blocks; Ctrl-C stops it
    # then:  agenttuning rollout --policy openai:agentlm ... with OPENAI_BASE_URL=http://127.0.0.1:8000/v1

    app = create_app(model, tokenizer, served_name="tiny")             # an in-memory model, for tests
"""

from agenttuning.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
