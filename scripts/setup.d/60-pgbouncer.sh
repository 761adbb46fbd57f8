#!/usr/bin/env bash
# The PgBouncer tests (xtests/tests/pgbouncer.rs) and `scripts/bench --pooled` run the worker
# through a real PgBouncer in transaction mode, which the harness starts on a free loopback port
# with its own pgbouncer.ini (xtests/src/pgbouncer.rs). Debian's package is 1.18.
# Installs the package only; the package's own service is kept from starting (a policy-rc.d
# that refuses for the duration of the install) and stopped/disabled if it runs anyway, so it
# holds no port.
set -euo pipefail
if [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1; then
  exit 0
fi
echo "setup.d/60-pgbouncer: installing pgbouncer from Debian packages" >&2
policy=/usr/sbin/policy-rc.d
had_policy=0
if [ -e "$policy" ]; then
  had_policy=1
else
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
if [ "$had_policy" = 0 ]; then
  rm -f "$policy"
  trap - EXIT
fi
# Whatever the init system, the system service must not run.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now pgbouncer >/dev/null 2>&1 || true
elif [ -x /etc/init.d/pgbouncer ]; then
  /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
  update-rc.d pgbouncer disable >/dev/null 2>&1 || true
fi
