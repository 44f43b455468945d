#!/usr/bin/env bash
# Builds the container image from a release binary with podman, checks what is in it, and runs it
# as the manifests run it (deploy/run_image.py). CI runs it from deploy/check.sh; as root:
#
#   bash deploy/image.sh "$(bash deploy/build.sh)"
#
# No base image can be pulled here, so the image is built with BINARY_FROM=prebuilt: the binary
# is CI's own release build (deploy/build.sh: static, crate list embedded), the runtime stage is
# `scratch`, as in a registry build. IMAGE (default localhost/cognito-gateway:ci) is left in
# podman's store for a look (`podman image inspect`); everything else is removed.
#
# podman and runc come from Debian's packages. Debian's podman 4.3 defaults to crun, which refuses
# these machines' hybrid cgroups, and to ulimits the sandbox may not raise: the containers.conf
# written below chooses runc, cgroupfs and no default ulimits. kube play also needs catatonit for
# the pod's infra container, which podman builds locally (localhost/podman-pause).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ] || [ ! -x "$1" ]; then
  echo "usage: bash deploy/image.sh PATH/TO/STATIC/cognito-gateway   (bash deploy/build.sh builds it)" >&2
  exit 2
fi
binary=$1
image=${IMAGE:-localhost/cognito-gateway:ci}
if [ "$(id -u)" -ne 0 ]; then
  echo "deploy/image.sh: runs rootful podman: run it as root" >&2
  exit 2
fi

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
[ -x /usr/sbin/runc ] || missing+=(runc)
command -v catatonit >/dev/null 2>&1 || missing+=(catatonit)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# The build context: exactly what the prebuilt stage copies.
mkdir "$work/context"
cp "$binary" "$work/context/cognito-gateway"
cp /etc/ssl/certs/ca-certificates.crt "$work/context/ca-certificates.crt"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "== image: podman build (BINARY_FROM=prebuilt, RUNTIME_BASE=scratch)"
# Images this build leaves dangling (its stages, the image it replaces) are removed after it;
# dangling images that were there before are not ours to remove.
dangling() { podman images --quiet --no-trunc --filter dangling=true | sort; }
dangling >"$work/dangling-before"
podman build --quiet --file deploy/Dockerfile --tag "$image" \
  --build-arg BINARY_FROM=prebuilt --build-arg RUNTIME_BASE=scratch \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  "$work/context" >/dev/null
comm -13 "$work/dangling-before" <(dangling) | xargs --no-run-if-empty podman rmi >/dev/null 2>&1 || true

echo "== image: what is in it"
podman image inspect "$image" >"$work/inspect.json"
container=$(podman create "$image")
podman export "$container" | tar -t >"$work/files"
podman cp "$container:/usr/local/bin/cognito-gateway" "$work/image-binary"
podman rm "$container" >/dev/null
objcopy --dump-section .dep-v0="$work/audit.zlib" "$work/image-binary"
python3 - "$work" "$version" "$revision" <<'EOF'
import json, subprocess, sys, zlib
from pathlib import Path

work, version, revision = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
config = json.loads((work / "inspect.json").read_text())[0]["Config"]
problems = []
# The runtime stage: the binary and the CA roots, nothing else (the rest are the mount points
# every container gets).
files = {line.rstrip("/") for line in (work / "files").read_text().split()}
files -= {"dev", "proc", "sys", "etc", "run", "etc/hosts", "etc/resolv.conf", "etc/hostname", "run/.containerenv", "usr", "usr/local", "usr/local/bin", "etc/ssl", "etc/ssl/certs"}
if files != {"usr/local/bin/cognito-gateway", "etc/ssl/certs/ca-certificates.crt"}:
    problems.append(f"files: {sorted(files)}")
if config.get("User") != "65532:65532":
    problems.append(f"user {config.get('User')!r}, not the numeric 65532:65532")
if config.get("Entrypoint") != ["/usr/local/bin/cognito-gateway"]:
    problems.append(f"entrypoint {config.get('Entrypoint')}")
labels = config.get("Labels") or {}
for key, want in [("title", "cognito-gateway"), ("version", version), ("revision", revision), ("licenses", "Apache-2.0")]:
    if labels.get(f"org.opencontainers.image.{key}") != want:
        problems.append(f"label org.opencontainers.image.{key} = {labels.get(f'org.opencontainers.image.{key}')!r}, not {want!r}")
# Static: no program interpreter (the dynamic loader), which scratch does not have.
headers = subprocess.run(["readelf", "--program-headers", work / "image-binary"], capture_output=True, text=True, check=True).stdout
if "INTERP" in headers:
    problems.append("the binary is dynamically linked (build it with deploy/build.sh)")
# cargo auditable's crate list, as scanners read it.
audit = json.loads(zlib.decompress((work / "audit.zlib").read_bytes()))
crates = {p["name"]: p["version"] for p in audit["packages"]}
if crates.get("cognito-gateway") != version or "tonic" not in crates or "aws-sdk-cognitoidentityprovider" not in crates:
    problems.append(f"the embedded crate list lacks the gateway or its dependencies: {sorted(crates)[:10]}...")
for problem in problems:
    print("FAIL:", problem)
if problems:
    sys.exit(1)
print(f"ok: static binary and CA roots only, user 65532:65532, OCI labels, {len(crates)} crates listed in the binary (cargo auditable)")
EOF
bundle_certs=$(grep -c 'BEGIN CERTIFICATE' "$work/context/ca-certificates.crt")
echo "ok: /etc/ssl/certs/ca-certificates.crt in the image: $bundle_certs roots (Debian's ca-certificates)"

echo "== image: run as the manifests run it (podman kube play)"
python3 deploy/run_image.py "$image" kube deploy/k8s/sidecar
python3 deploy/run_image.py "$image" kube deploy/k8s/shared deploy/k8s/shared/example-caller.yaml
python3 deploy/run_image.py "$image" kube deploy/k8s/shared-jwt deploy/k8s/shared-jwt/example-caller.yaml
echo "== image: reaching AWS (DNS, TLS roots, SigV4) against moto"
python3 deploy/run_image.py "$image" aws
echo "deploy/image.sh: ok"
