"""From conversations to tokens: chat templates, offline real tokenizers, loss masks, packing.

Nothing heavy is imported here; import the submodule you need (e.g. :mod:`agenttuning.tokens.offline`).
"""
