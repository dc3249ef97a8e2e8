#!/usr/bin/env bash
# Installs Debian's slurm-wlm and munge for the single-node SLURM used by the tests
# (infra/slurm/local_cluster.py). Needs root; does nothing if they are already there.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v munged >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
