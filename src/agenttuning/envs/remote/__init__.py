"""Environments over HTTP: a client for environment servers, and a server for our own families.

``--env remote:URL`` (any command that takes an environment) plays the family an ``agenttuning env-serve`` server
at URL serves, with the same id, prompts and tasks as on the server's machine; ``remote:URL#FLAVOR`` plays one of
AgentGym's ``agentenv-*`` servers (textcraft, babyai, sciworld, alfworld, webshop). ``agenttuning env-serve ENV``
serves any registered family in the same protocol. See docs/envs/remote.md.

- :mod:`~agenttuning.envs.remote.protocol`: the wire records;
- :mod:`~agenttuning.envs.remote.http`: bounded, retried calls; :class:`RemoteEnvError`;
- :mod:`~agenttuning.envs.remote.flavors`: what each kind of server sends and expects;
- :mod:`~agenttuning.envs.remote.client` and :mod:`~agenttuning.envs.remote.definition`: the remote family;
- :mod:`~agenttuning.serve.env_instances` and :mod:`~agenttuning.serve.env_app`: ``env-serve``.
"""

from agenttuning.envs.remote.definition import PREFIX, RemoteDefinition, definition_for, parse_spec
from agenttuning.envs.remote.http import RemoteEnvError

__all__ = ["PREFIX", "RemoteDefinition", "RemoteEnvError", "definition_for", "parse_spec"]
