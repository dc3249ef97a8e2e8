#!/usr/bin/env bash
# Installs Debian's chromium for the headless check of the MLflow UI in the sweep tests.
# Needs root; does nothing if it is already there.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
