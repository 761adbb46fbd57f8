#!/usr/bin/env bash
# The systemd unit test (xtests/tests/install.rs) runs `systemd-analyze verify` on
# packaging/lettuce-worker.service. systemd-analyze comes with Debian's `systemd` package;
# installs it only when the command is missing (nothing is started).
set -euo pipefail
if command -v systemd-analyze >/dev/null 2>&1; then
  exit 0
fi
echo "setup.d/50-systemd: installing systemd (for systemd-analyze) from Debian packages" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
