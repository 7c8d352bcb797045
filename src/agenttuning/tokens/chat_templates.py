"""Chat templates (Jinja, as Hugging Face tokenizers carry them) for the offline tokenizers in :mod:`.offline`.

The offline tokenizers' templates render message contents verbatim (no ``| trim``) so that a trajectory and its
training tokens stay byte-identical, and the Llama 3 one is *prefix-preserving*: rendering the first ``k`` turns gives
a prefix of rendering all of them, which is what lets a loss mask be cut per turn (habit 5 of ARCHITECTURE.md).
Their assistant turns are wrapped in ``{% generation %}`` blocks, so ``apply_chat_template(...,
return_assistant_tokens_mask=True)`` marks the assistant tokens (content and end-of-turn token).

:data:`META_LLAMA3_CHAT_TEMPLATE` is Meta's published Llama 3 template as it is (it trims contents): what users of
Llama 3 Instruct checkpoints have, and what the masks are tested against.
"""

from __future__ import annotations

#: Llama 3 (Meta's ``ChatFormat``): ``<|begin_of_text|>``, then per message
#: ``<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>``; ``add_generation_prompt`` opens the
#: assistant header.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|eot_id|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)

#: Meta's official Llama 3 Instruct template, as published with ``Meta-Llama-3-8B-Instruct`` (``tokenizer_config.json``)
#: and as TRL ships it (``trl/chat_templates/llama3.jinja``): the same markup as :data:`LLAMA3_CHAT_TEMPLATE`, but every
#: message's content is ``| trim``-med (Python's ``str.strip``). It rewrites contents, so the model's own template is
#: used as it is (:class:`~.templates.RenderedTemplate`): the trained tokens are the trimmed reply as rendered.
META_LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

#: Mistral instruct v3 (as ``mistral-common`` encodes it): ``<s>[INST]{user}[/INST]{assistant}</s>[INST]...``.
#: There is no space after ``[INST]``/``[/INST]``: :func:`~.offline.mistral_tokenizer` puts SentencePiece's ``▁``
#: prefix on every stretch of text between special tokens (so the ids are ``[INST] ▁{user} [/INST] ▁{assistant}``,
#: as mistral-common encodes them, and as hub templates get with ``'[INST] '`` and a prefix-on-first-text-only
#: tokenizer).
#: Roles must alternate user/assistant after an optional leading system message, which (as in mistral-common v3)
#: is put in front of the *last* user message, separated by a blank line. The prompt already ends on ``[/INST]``,
#: so ``add_generation_prompt`` adds nothing.
MISTRAL_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Mistral conversations must alternate user/assistant/user/... after an optional system "
    "message') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.index0 == ns.last_user and system_message is defined -%}"
    "{{- '[INST]' + system_message + '\\n\\n' + message['content'] + '[/INST]' -}}"
    "{%- else -%}"
    "{{- '[INST]' + message['content'] + '[/INST]' -}}"
    "{%- endif -%}"
    "{%- else -%}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

#: Mistral Tekken (Mistral NeMo, ``tekken_240718.json``): the same rendering as :data:`MISTRAL_CHAT_TEMPLATE`,
#: which is exactly what mistral-common's v3 Tekken encoder produces: ``<s>[INST]{user}[/INST]{assistant}</s>``
#: with ``[INST]``/``[/INST]`` control tokens and no spaces around them (Tekken has no SentencePiece dummy
#: prefix, so ``[INST] hi`` would put a space into the text), a leading system message in front of the last user
#: message. That system placement makes it *not* prefix-preserving for conversations with a system message; the
#: structured ``mistral`` template of :mod:`agenttuning.tokens.templates` puts it in front of the first one instead.
TEKKEN_CHAT_TEMPLATE = MISTRAL_CHAT_TEMPLATE
