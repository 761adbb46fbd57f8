#!/usr/bin/env bash
# The S3 emulator the artifact tests start on a loopback port (xtests/src/s3.rs): moto's
# server from PyPI. Installs only when `moto.server` cannot be imported.
set -euo pipefail
if python3 -c 'import moto.server' >/dev/null 2>&1; then
  exit 0
fi
echo "setup.d/20-moto: installing moto[server] from PyPI" >&2
python3 -m pip install --quiet 'moto[server]'
