"""``python -m agenttuning.train --config X [key=value ...]``: the entry point for ``accelerate launch -m``.

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m agenttuning.train \\
        --config configs/agentlm-7b.yaml agent_data=... general_data=...
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agenttuning.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 max_steps=100")
    args = parser.parse_args(argv)
    from agenttuning.train import ConfigError, load_config, train

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = train(config)
    print(f"trained {result.steps} steps; model in {result.model_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
