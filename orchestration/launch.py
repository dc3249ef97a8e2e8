"""Entry point: `python orchestration/launch.py [hydra overrides]`, locally, via `ray job submit`,
or submitting to SLURM (cluster=slurm). Composes the typed config and hands it to
`orchestration.cluster.launch`; nothing imports this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable as a script from the repo root (python orchestration/launch.py) without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from cgsgan.config import ConfigError  # noqa: E402
from orchestration import cluster  # noqa: E402
from orchestration.config import register, to_typed  # noqa: E402

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(dcfg: DictConfig) -> None:
    try:
        cfg = to_typed(dcfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(cluster.launch(cfg))


if __name__ == "__main__":
    main()
