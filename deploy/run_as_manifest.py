#!/usr/bin/env python3
"""Run the gateway binary the way a Kubernetes manifest and deploy/Dockerfile would run it, then
check that it comes up SERVING, admits and refuses callers as configured, and stops cleanly.

    python3 deploy/run_as_manifest.py BINARY [--variant DIR] [--caller FILE]

No container runtime or cluster is needed. From the rendered variant (`kubectl kustomize DIR`, or
the kustomization's plain resource files where kubectl is missing) and the Dockerfile's final
stage, it takes:

- the command line: the image's ENTRYPOINT (with BINARY copied to its path) and the container's
  `args`, else the image's CMD; `$(VAR)` references expanded as the kubelet expands them;
- the environment: the base image's (PATH, SSL_CERT_FILE, HOME), HOSTNAME, and the container's
  `env` and `envFrom`, with literal values, ConfigMap and Secret keys, and the downward API
  (metadata.*, status.podIP, status.hostIP) resolved. Nothing else is inherited;
- the files: each volume mount is written to a stand-in directory, `ROOT/<mountPath>`, where ROOT
  is a fresh temporary directory that stands in for the container's root filesystem, in the
  kubelet's layout (`..data` symlinks) with the volume's modes and, with fsGroup, its group.
  The process cannot see the real mount paths, so every occurrence of a mount path in the
  arguments, the environment and the mounted ConfigMap and Secret files is rewritten to its
  stand-in. A projected service-account token cannot be minted here: its file is left out (the
  AWS SDK reads the IRSA token only when the first Cognito call needs credentials);
- the user: runAsUser/runAsGroup (else the image's USER), fsGroup and supplementalGroups as
  supplementary groups, no_new_privs (allowPrivilegeEscalation: false), and empty capability sets
  (drop: [ALL]), through setpriv, when this script runs as root;
- the probes: each gRPC probe is asked, on the probe's port at the pod's address, for the
  probe's service, and must answer SERVING.

Run as root, it also isolates the process the way a pod is isolated, in a new network and mount
namespace (unshare): the pod has an address of its own (192.0.2.10, a documentation address on the
namespace's loopback), so a probe reaches only what listens on the pod IP and a loopback-only port
is shown unreachable from outside; nothing outside the namespace is reachable, so the check also
proves the start needs no AWS, STS, IMDS, OTLP collector or JWKS endpoint; and with
readOnlyRootFilesystem every mount is remounted read-only, so the only writable places are
emptyDir volumes (fresh tmpfs mounts). Not emulated: seccomp, AppArmor/SELinux, cgroup limits
(resources), the image's own file system (the binary runs on this machine's libraries), and the
pod's other containers (their Secrets are read only to act as a caller).

Then, as callers would: with no token, or a wrong one, the API answers UNAUTHENTICATED. The caller
is the other container of the pod that sets COGNITO_GATEWAY_ADDR (sidecar), or the Deployment in
--caller FILE (shared: its Service address is followed to the pod, and the NetworkPolicies must
admit it and refuse an unlabelled pod). With the token its COGNITO_GATEWAY_TOKEN_FILE names (read
from the Secret mounted there), a pool it may not use is PERMISSION_DENIED CALLER_NOT_ALLOWED and an
empty username in its pool INVALID_ARGUMENT: authenticated, authorized, refused at the edge, so no
call reaches Cognito. A projected token (JWT) cannot be minted here: its audience and subject are
checked against [auth.jwt] and [[callers]] instead. With [fleet], the gateway must say it loaded it
and serve all of the above although its Redis cannot be reached (it never needs Redis to start or
to refuse a call at the edge). Finally SIGTERM: exit code 0 within the pod's
terminationGracePeriodSeconds, and with COGNITO_GATEWAY_LOG_FORMAT=json every line logged while
serving is JSON.

Needs PyYAML, grpcio and grpcio-health-checking (deploy/check.sh installs them when missing).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ISOLATED_MARK = "RUN_AS_MANIFEST_ISOLATED"
POD_IP = "192.0.2.10"  # TEST-NET-1: inside our own network namespace only
HOST_IP = "192.0.2.1"  # the "node": nothing listens there (no OTLP collector)
SERVICE = "cognitogateway.v1.UserAdminService"

# What the runtime image's config provides, which the Dockerfile does not say itself. Verify with
# `docker inspect gcr.io/distroless/cc-debian12:nonroot` (Config.Env, .User, .WorkingDir); HOME is
# set by the container runtime from the user's /etc/passwd entry (nonroot: /home/nonroot).
BASE_IMAGES = {
    "gcr.io/distroless/cc-debian12:nonroot": {
        "env": {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
            "HOME": "/home/nonroot",
        },
        "user": "65532:65532",
        "workdir": "/home/nonroot",
    },
}


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"run_as_manifest: {message}", flush=True)


# --- the image ------------------------------------------------------------------------------------


def read_dockerfile(path: Path) -> dict:
    """ENTRYPOINT, CMD, USER and WORKDIR of the final stage, over the base image's defaults."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    stage: list[tuple[str, str]] = []
    base = None
    for line in lines:
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        word, rest = parts[0].upper(), (parts[1] if len(parts) > 1 else "")
        if word == "FROM":
            base = rest.split()[0]
            stage = []
        else:
            stage.append((word, rest))
    if base not in BASE_IMAGES:
        raise CheckFailed(
            f"{path}: final stage FROM {base}: its image config is unknown here; add it to BASE_IMAGES"
        )
    image = {"entrypoint": None, "cmd": None, **json.loads(json.dumps(BASE_IMAGES[base]))}
    for word, rest in stage:
        if word in ("ENTRYPOINT", "CMD"):
            try:
                value = json.loads(rest)
            except json.JSONDecodeError as error:
                raise CheckFailed(f"{path}: {word} must be exec form (a JSON array): {error}") from None
            image[word.lower()] = value
        elif word == "USER":
            image["user"] = rest.strip()
        elif word == "WORKDIR":
            image["workdir"] = rest.strip()
        elif word == "ENV":
            raise CheckFailed(f"{path}: ENV in the final stage is not handled by this script yet")
    if not image["entrypoint"]:
        raise CheckFailed(f"{path}: the final stage has no exec-form ENTRYPOINT")
    return image


# --- the manifests --------------------------------------------------------------------------------


def render(variant: Path) -> list[dict]:
    if shutil.which("kubectl"):
        out = subprocess.run(
            ["kubectl", "kustomize", str(variant)], check=True, capture_output=True, text=True
        ).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]
    # Without kubectl: the kustomization's own resource files (no overlays, patches or images).
    kustomization = yaml.safe_load((variant / "kustomization.yaml").read_text())
    if kustomization.get("patches") or any(
        (variant / r).is_dir() for r in kustomization.get("resources", [])
    ):
        raise CheckFailed(f"{variant}: an overlay; rendering it needs kubectl (kustomize)")
    docs = []
    for resource in kustomization.get("resources", []):
        docs += [doc for doc in yaml.safe_load_all((variant / resource).read_text()) if doc]
    namespace = kustomization.get("namespace")
    for doc in docs:
        if namespace and doc.get("kind") != "Namespace":
            doc.setdefault("metadata", {})["namespace"] = namespace
    return docs


def load_file(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(docs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    for doc in docs:
        meta = doc.get("metadata", {})
        if (
            doc.get("kind") == kind
            and meta.get("name") == name
            and (namespace is None or meta.get("namespace", namespace) == namespace)
        ):
            return doc
    raise CheckFailed(f"{kind} {name} is not in the manifests")


def object_data(doc: dict) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys, as the kubelet would write them."""
    data = {}
    if doc["kind"] == "Secret":
        for key, value in (doc.get("data") or {}).items():
            data[key] = base64.b64decode(value)
    else:
        for key, value in (doc.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value)
        for key, value in (doc.get("data") or {}).items():
            data[key] = value.encode()
    for key, value in (doc.get("stringData") or {}).items():
        data[key] = value.encode()
    return data


def pod_containers(pod: dict) -> list[dict]:
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: defined names are replaced, $$ escapes, the rest stays."""

    def one(match: re.Match) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", lambda m: "$" if m.group(0) == "$$" else one(m), value
    )


class Pod:
    """One pod of a Deployment, as far as running one of its containers needs."""

    def __init__(self, docs: list[dict], deployment: dict):
        self.docs = docs
        self.deployment = deployment
        self.namespace = deployment["metadata"].get("namespace", "default")
        self.name = f"{deployment['metadata']['name']}-run-as-manifest"
        self.spec = deployment["spec"]["template"]["spec"]
        self.labels = deployment["spec"]["template"].get("metadata", {}).get("labels", {})

    def container(self, name: str) -> dict:
        for container in pod_containers(self.spec):
            if container["name"] == name:
                return container
        raise CheckFailed(f"no container {name} in Deployment {self.deployment['metadata']['name']}")

    def volume(self, name: str) -> dict:
        for volume in self.spec.get("volumes") or []:
            if volume["name"] == name:
                return volume
        raise CheckFailed(f"volume {name} is mounted but not defined")

    def lookup(self, kind: str, name: str) -> dict:
        return find(self.docs, kind, name, self.namespace)

    def field(self, path: str) -> str:
        values = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": "00000000-0000-0000-0000-000000000000",
            "spec.nodeName": "node-run-as-manifest",
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
            "status.hostIP": HOST_IP,
            "status.hostIPs": HOST_IP,
        }
        match = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
        if match:
            return self.labels.get(match.group(1), "")
        if path not in values:
            raise CheckFailed(f"downward API field {path} is not emulated")
        return values[path]

    def env(self, container: dict, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        env["HOSTNAME"] = self.name
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            for key, value in object_data(self.lookup(kind, ref["name"])).items():
                env[prefix + key] = value.decode()
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "valueFrom" in var:
                source = var["valueFrom"]
                if "fieldRef" in source:
                    env[var["name"]] = self.field(source["fieldRef"]["fieldPath"])
                elif "configMapKeyRef" in source or "secretKeyRef" in source:
                    ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
                    kind = "ConfigMap" if "configMapKeyRef" in source else "Secret"
                    env[var["name"]] = object_data(self.lookup(kind, ref["name"]))[ref["key"]].decode()
                else:
                    raise CheckFailed(f"env {var['name']}: {list(source)} is not emulated")
            else:
                env[var["name"]] = ""
        return env

    def identity(self, container: dict, image: dict) -> tuple[int, int, list[int]]:
        pod_sc = self.spec.get("securityContext") or {}
        sc = container.get("securityContext") or {}
        image_user, _, image_group = image["user"].partition(":")
        if not image_user.isdigit():
            raise CheckFailed(f"image USER {image['user']} is not numeric: runAsNonRoot cannot verify it")
        uid = sc.get("runAsUser", pod_sc.get("runAsUser", int(image_user)))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", int(image_group or image_user)))
        if (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True) and uid == 0:
            raise CheckFailed("runAsNonRoot is set but the container would run as uid 0")
        groups = [
            g for g in [pod_sc.get("fsGroup")] + list(pod_sc.get("supplementalGroups") or []) if g is not None
        ]
        return uid, gid, groups


# --- the files ------------------------------------------------------------------------------------


def write_atomic_volume(target: Path, files: dict[str, tuple[bytes, int]], group: int | None) -> None:
    """The kubelet's AtomicWriter layout: the files in a timestamped directory, `..data` pointing
    at it, and each key a symlink through `..data` (which is how an update replaces them all at
    once)."""
    target.mkdir(parents=True, exist_ok=True)
    stamp = target / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir()
    for key, (content, mode) in files.items():
        path = stamp / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if group is not None and os.geteuid() == 0:
            os.chown(path, 0, group)
        os.chmod(path, mode)
    for directory in [target, *sorted(p for p in stamp.rglob("*") if p.is_dir()), stamp]:
        if group is not None and os.geteuid() == 0:
            os.chown(directory, 0, group)
        os.chmod(directory, 0o755)
    (target / "..data").symlink_to(stamp.name)
    for key in files:
        top = key.split("/")[0]
        if not (target / top).exists():
            (target / top).symlink_to(f"..data/{top}")


def projected_files(
    pod: Pod, items: list | None, data: dict[str, bytes], default_mode: int
) -> dict[str, tuple[bytes, int]]:
    if items:
        return {item["path"]: (data[item["key"]], item.get("mode", default_mode)) for item in items}
    return {key: (value, default_mode) for key, value in data.items()}


def volume_files(pod: Pod, volume: dict) -> tuple[str, dict[str, tuple[bytes, int]], list[str]]:
    """(kind, files, notes) for a volume: kind is "atomic", "emptyDir" or "unsupported"."""
    notes: list[str] = []
    if "configMap" in volume:
        source = volume["configMap"]
        data = object_data(pod.lookup("ConfigMap", source["name"]))
        return (
            "atomic",
            projected_files(pod, source.get("items"), data, source.get("defaultMode", 0o644)),
            notes,
        )
    if "secret" in volume:
        source = volume["secret"]
        data = object_data(pod.lookup("Secret", source["secretName"]))
        return (
            "atomic",
            projected_files(pod, source.get("items"), data, source.get("defaultMode", 0o644)),
            notes,
        )
    if "projected" in volume:
        source = volume["projected"]
        mode = source.get("defaultMode", 0o644)
        files: dict[str, tuple[bytes, int]] = {}
        for part in source.get("sources") or []:
            if "configMap" in part:
                data = object_data(pod.lookup("ConfigMap", part["configMap"]["name"]))
                files |= projected_files(pod, part["configMap"].get("items"), data, mode)
            elif "secret" in part:
                data = object_data(pod.lookup("Secret", part["secret"]["name"]))
                files |= projected_files(pod, part["secret"].get("items"), data, mode)
            elif "serviceAccountToken" in part:
                token = part["serviceAccountToken"]
                notes.append(
                    f"volume {volume['name']}: service-account token {token['path']} "
                    f"(audience {token.get('audience', 'the API server')}) cannot be minted here; left out"
                )
            else:
                raise CheckFailed(f"volume {volume['name']}: projected source {list(part)} is not emulated")
        return "atomic", files, notes
    if "emptyDir" in volume:
        return "emptyDir", {}, notes
    raise CheckFailed(f"volume {volume['name']}: {[k for k in volume if k != 'name']} is not emulated")


class Rootfs:
    """A temporary directory standing in for the container's root filesystem."""

    def __init__(self, base: Path):
        self.root = base / "rootfs"
        self.root.mkdir(mode=0o755)
        self.prefixes: list[tuple[str, str]] = []
        self.writable: list[Path] = []

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def map(self, inside: str) -> None:
        self.prefixes.append((inside.rstrip("/"), str(self.path(inside)).rstrip("/")))
        self.prefixes.sort(key=lambda pair: -len(pair[0]))

    def rewrite(self, text: str) -> str:
        """Every mapped path (longest first) to its stand-in, where it is a whole path prefix:
        one pass, so that a stand-in is never rewritten again."""
        if not self.prefixes:
            return text
        table = dict(self.prefixes)
        pattern = "|".join(re.escape(inside) for inside, _ in self.prefixes)
        return re.sub(rf"(?<![\w./-])({pattern})(?=$|[/\"'\s,;:])", lambda m: table[m.group(1)], text)


def populate(pod: Pod, container: dict, rootfs: Rootfs, image: dict) -> list[str]:
    notes = []
    group = (pod.spec.get("securityContext") or {}).get("fsGroup")
    mounts = container.get("volumeMounts") or []
    for mount in mounts:
        rootfs.map(mount["mountPath"])
    rootfs.map(image["workdir"])
    rootfs.map(image["env"]["HOME"])
    for mount in mounts:
        volume = pod.volume(mount["name"])
        kind, files, volume_notes = volume_files(pod, volume)
        notes += volume_notes
        target = rootfs.path(mount["mountPath"])
        if "subPath" in mount:
            key = mount["subPath"]
            if key not in files:
                raise CheckFailed(
                    f"mount {mount['mountPath']}: subPath {key} is not in volume {volume['name']}"
                )
            content, mode = files[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(rootfs.rewrite(content.decode()).encode())
            os.chmod(target, mode)
            continue
        if kind == "emptyDir":
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, 0o777)
            rootfs.writable.append(target)
            continue
        # Paths inside mounted text files (auth.token_file in gateway.toml, say) follow the rewrite.
        rewritten = {}
        for key, (content, mode) in files.items():
            with contextlib.suppress(UnicodeDecodeError):
                content = rootfs.rewrite(content.decode()).encode()
            rewritten[key] = (content, mode)
        write_atomic_volume(target, rewritten, group)
    for directory in (image["workdir"], image["env"]["HOME"]):
        rootfs.path(directory).mkdir(parents=True, exist_ok=True)
    return notes


# --- isolation ------------------------------------------------------------------------------------


def can_isolate() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


def enter_isolation(argv: list[str]) -> int:
    """Runs this script again inside new network and mount namespaces, handing it an empty
    directory for the stand-in root filesystem."""
    work = tempfile.mkdtemp(prefix="run-as-manifest-")
    try:
        env = dict(os.environ, **{ISOLATED_MARK: work})
        command = ["unshare", "--net", "--mount", "--propagation", "private", sys.executable, *argv]
        return subprocess.run(command, env=env).returncode
    finally:
        os.rmdir(work)


def set_up_network() -> None:
    for command in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{POD_IP}/32", "dev", "lo"],
        ["ip", "addr", "add", f"{HOST_IP}/32", "dev", "lo"],
    ):
        subprocess.run(command, check=True)


def mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point))
    return points


def make_read_only(writable: list[Path]) -> int:
    """readOnlyRootFilesystem: every mount of this namespace read-only (the host's are not
    touched), then a fresh tmpfs for each emptyDir."""
    count = 0
    for point in mount_points():
        done = subprocess.run(["mount", "-o", "remount,bind,ro", point], capture_output=True)
        count += done.returncode == 0
    for directory in writable:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", str(directory)], check=True
        )
    return count


# --- gRPC -----------------------------------------------------------------------------------------


def grpc_channel(address: str):
    import grpc

    # No proxy: a probe or a caller in the pod dials the gateway directly.
    return grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])


def health(address: str, service: str, timeout: float = 2.0) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving(address: str, service: str, budget: float, process: subprocess.Popen) -> float:
    import grpc

    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < budget:
        if process.poll() is not None:
            raise CheckFailed(f"the gateway exited with code {process.returncode} before SERVING")
        try:
            status = health(address, service, timeout=1.0)
            if status == "SERVING":
                return time.monotonic() - start
            last = status
        except grpc.RpcError as error:
            last = f"{error.code().name}: {error.details()}"
        time.sleep(0.1)
    raise CheckFailed(f"health {service!r} at {address} not SERVING within {budget:.0f}s: {last}")


def field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field (every field of ResetUserPasswordRequest is a string)."""
    key, length, out = (number << 3) | 2, len(value), bytearray()
    for n in (key, length):
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                break
    return bytes(out) + value


def varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def read_fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of a protobuf message (varints are skipped)."""
    fields, i = [], 0
    while i < len(data):
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(data, i)
        elif wire == 2:
            length, i = varint(data, i)
            fields.append((number, data[i : i + length]))
            i += length
        else:
            raise ValueError(f"wire type {wire}")
    return fields


def error_reason(error) -> str:
    """ErrorInfo.reason from grpc-status-details-bin (google.rpc.Status.details[].ErrorInfo)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for number, detail in read_fields(value):
                if number != 3:  # Status.details: Any
                    continue
                parts = dict(read_fields(detail))
                if parts.get(1, b"").endswith(b"google.rpc.ErrorInfo"):
                    return dict(read_fields(parts.get(2, b""))).get(1, b"").decode()
    return "(no ErrorInfo)"


def reset(address: str, token: str | None, pool: str, username: str = "") -> tuple[str, str]:
    """ResetUserPassword: (code, ErrorInfo reason). The request carries no username when it is
    empty, which the gateway refuses at the edge, so this never reaches Cognito."""
    import grpc

    request = field(1, pool.encode()) + (field(2, username.encode()) if username else b"")
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    with grpc_channel(address) as channel:
        call = channel.unary_unary("/cognitogateway.v1.UserAdminService/ResetUserPassword")
        try:
            call(request, metadata=metadata, timeout=3.0)
            return "OK", ""
        except grpc.RpcError as error:
            return error.code().name, error_reason(error)


def expect_reset(label: str, address: str, token: str | None, pool: str, code: str, reason: str) -> None:
    got = reset(address, token, pool)
    if got != (code, reason):
        raise CheckFailed(f"{label}: expected {code} {reason}, got {got[0]} {got[1]}")
    say(f"ok: {label}: {code} {reason}")


# --- the run --------------------------------------------------------------------------------------


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class Caller:
    """Who calls the gateway in the check: its address, its token, its policy."""

    def __init__(self, address: str, token: str | None, source: str):
        self.address, self.token, self.source = address, token, source
        # With a projected service-account token: its audience and the `sub` it will carry.
        self.audience: str | None = None
        self.subject: str | None = None
        # Its pod's and namespace's labels, for the NetworkPolicy; whether it is in the gateway's pod.
        self.peer: tuple[dict, dict] = ({}, {})
        self.same_pod = False


def find_caller(docs: list[dict], pod: Pod, gateway: str, caller_file: Path | None) -> Caller | None:
    """The other container of the pod that sets COGNITO_GATEWAY_ADDR, or the first one in
    --caller FILE; its token is the file COGNITO_GATEWAY_TOKEN_FILE names, read through its mounts
    (None where that is a projected token, which cannot be minted here)."""
    candidates: list[tuple[Pod, dict, list[dict]]] = []
    if caller_file:
        extra = load_file(caller_file)
        for doc in extra:
            if doc.get("kind") == "Deployment":
                other = Pod(extra, doc)
                candidates += [(other, c, extra) for c in pod_containers(other.spec)]
    else:
        candidates += [(pod, c, docs) for c in pod_containers(pod.spec) if c["name"] != gateway]
    for owner, container, _ in candidates:
        env = {v["name"]: v.get("value") for v in container.get("env") or []}
        if "COGNITO_GATEWAY_ADDR" not in env:
            continue
        token_file = env.get("COGNITO_GATEWAY_TOKEN_FILE")
        caller = Caller(
            env["COGNITO_GATEWAY_ADDR"], None, f"{owner.deployment['metadata']['name']}/{container['name']}"
        )
        namespace_labels = {"kubernetes.io/metadata.name": owner.namespace}
        for doc in owner.docs:
            if doc.get("kind") == "Namespace" and doc["metadata"]["name"] == owner.namespace:
                namespace_labels |= doc["metadata"].get("labels") or {}
        caller.peer = (owner.labels, namespace_labels)
        caller.same_pod = owner is pod
        for mount in container.get("volumeMounts") or []:
            prefix = mount["mountPath"].rstrip("/") + "/"
            if token_file and token_file.startswith(prefix):
                volume = owner.volume(mount["name"])
                _, files, _ = volume_files(owner, volume)
                key = token_file[len(prefix) :]
                if key in files:
                    caller.token = files[key][0].decode().strip()
                    caller.source += f", token from {token_file}"
                for part in (volume.get("projected") or {}).get("sources") or []:
                    projected = part.get("serviceAccountToken")
                    if projected and projected["path"] == key:
                        caller.audience = projected.get("audience")
                        account = owner.spec.get("serviceAccountName", "default")
                        caller.subject = f"system:serviceaccount:{owner.namespace}:{account}"
                        caller.source += f", projected token {token_file}"
        return caller
    return None


def service_address(docs: list[dict], pod: Pod, gateway: dict, address: str) -> str:
    """Where a caller's address lands in this one-pod emulation: loopback stays loopback (same
    pod); a Service's DNS name goes to the pod IP and the container port behind the Service's
    targetPort."""
    target = re.sub(r"^[a-z]+://", "", address)
    host, port = host_port(target)
    if host in ("127.0.0.1", "localhost", "::1"):
        return f"{host}:{port}"
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?", host)
    if not match:
        raise CheckFailed(f"caller address {address}: neither loopback nor a Service name")
    service = find(docs, "Service", match.group(1), match.group(2))
    selector = service["spec"].get("selector") or {}
    if any(pod.labels.get(k) != v for k, v in selector.items()):
        raise CheckFailed(f"Service {match.group(1)} does not select the gateway's pods")
    for entry in service["spec"]["ports"]:
        if entry["port"] == port:
            target_port = entry.get("targetPort", port)
            if isinstance(target_port, str):
                named = [
                    p["containerPort"] for p in gateway.get("ports") or [] if p.get("name") == target_port
                ]
                if not named:
                    raise CheckFailed(
                        f"Service {match.group(1)}: targetPort {target_port} names no container port"
                    )
                target_port = named[0]
            return f"{POD_IP}:{target_port}"
    raise CheckFailed(f"Service {match.group(1)} has no port {port}")


def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if selector.get("matchExpressions"):
        raise CheckFailed("NetworkPolicy matchExpressions are not emulated")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def admitted(docs: list[dict], pod: Pod, port: int, peer: tuple[dict, dict] | None) -> bool:
    """Whether the NetworkPolicies selecting the gateway's pod admit `peer` (pod labels, namespace
    labels; None: a source no selector can name, such as the node) to `port`."""
    policies = [
        d
        for d in docs
        if d.get("kind") == "NetworkPolicy"
        and d["metadata"].get("namespace", pod.namespace) == pod.namespace
        and selects(d["spec"].get("podSelector"), pod.labels)
        and "Ingress" in (d["spec"].get("policyTypes") or ["Ingress"])
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (port, None) for p in ports):
                continue
            sources = rule.get("from")
            if not sources:
                return True
            for source in sources:
                if peer is None or "ipBlock" in source:
                    continue
                pod_labels, namespace_labels = peer
                if "namespaceSelector" in source:
                    if selects(source["namespaceSelector"], namespace_labels) and selects(
                        source.get("podSelector"), pod_labels
                    ):
                        return True
                elif (
                    selects(source.get("podSelector"), pod_labels)
                    and namespace_labels.get("kubernetes.io/metadata.name") == pod.namespace
                ):
                    return True
    return False


def caller_policy(
    config: dict, token_files: dict[str, str], token: str
) -> tuple[str | None, list[str] | None]:
    """The caller name and pools (None: every pool) that a token gets under the config."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    token_file = config.get("auth", {}).get("token_file")
    hashes = tomllib.loads(token_files[token_file]) if token_file in token_files else {}
    for caller in config.get("callers", []):
        if caller.get("token_sha256", hashes.get(caller["name"])) == digest:
            pools = caller.get("user_pools", [])
            return caller["name"], (None if pools == ["*"] else pools)
    return None, None


class Launch:
    """How the container's process is started: argv, environment, directory, user."""

    def __init__(self, args: argparse.Namespace, pod: Pod, container: dict, image: dict, rootfs: Rootfs):
        for note in populate(pod, container, rootfs, image):
            say(f"note: {note}")
        # The command line: ENTRYPOINT unless `command`; `args`, else CMD unless `command`.
        entrypoint = container.get("command") or image["entrypoint"]
        if "args" in container:
            arguments = container["args"]
        else:
            arguments = [] if "command" in container else image["cmd"] or []
        # The binary where the image has it.
        binary = rootfs.path(entrypoint[0])
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(args.binary, binary)
        os.chmod(binary, 0o755)
        rootfs.map(entrypoint[0])

        env = pod.env(container, dict(image["env"]))
        self.argv = [rootfs.rewrite(expand(a, env)) for a in [*entrypoint, *arguments]]
        self.env = {k: rootfs.rewrite(v) for k, v in env.items()}
        self.workdir = rootfs.path(container.get("workingDir") or image["workdir"])
        self.uid, self.gid, self.groups = pod.identity(container, image)
        self.security = container.get("securityContext") or {}

    def command(self) -> list[str]:
        """argv, behind setpriv when we are root: the user, groups, no_new_privs, capabilities."""
        if os.geteuid() != 0:
            say(f"note: not root: running as uid {os.getuid()}, not {self.uid}")
            return self.argv
        prefix = ["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid)]
        prefix += ["--groups", ",".join(map(str, self.groups))] if self.groups else ["--clear-groups"]
        if self.security.get("allowPrivilegeEscalation") is False:
            prefix.append("--no-new-privs")
        if "ALL" in ((self.security.get("capabilities") or {}).get("drop") or []):
            prefix += ["--inh-caps", "-all", "--ambient-caps", "-all", "--bounding-set", "-all"]
        return [*prefix, "--", *self.argv]

    def flag(self, flag: str, variable: str, default: str | None = None) -> str | None:
        """A flag's value from argv, else its environment twin, else the default."""
        for i, arg in enumerate(self.argv):
            if arg == flag and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return self.env.get(variable, default)


class Process:
    """The running gateway, its output collected."""

    def __init__(self, launch: Launch):
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            launch.command(),
            env=launch.env,
            cwd=launch.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.readers = [
            threading.Thread(target=self._pump, args=(stream,), daemon=True)
            for stream in (self.popen.stdout, self.popen.stderr)
        ]
        for reader in self.readers:
            reader.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()
        self._drain()
        if self.lines:
            print(
                "run_as_manifest: the gateway's output:\n  " + "\n  ".join(self.lines[-30:]), file=sys.stderr
            )

    def terminate(self, grace: float) -> tuple[int, float]:
        """SIGTERM, then SIGKILL after `grace` seconds, as the kubelet stops a container."""
        sent = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CheckFailed(
                f"still running {grace}s after SIGTERM (terminationGracePeriodSeconds): SIGKILL"
            ) from None
        self._drain()
        return code, time.monotonic() - sent

    def _drain(self) -> None:
        for reader in self.readers:
            reader.join(timeout=5)


def check_probes(container: dict, process: Process, pod_ip: str) -> int:
    """Every probe as the kubelet sends it: gRPC health, the probe's service, at the pod IP. Returns
    the probe port."""
    probes = [
        (kind, container[kind])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in container
    ]
    if not probes:
        raise CheckFailed("the gateway container has no probes")
    startup = dict(probes).get("startupProbe") or {}
    budget = startup.get("initialDelaySeconds", 0) + startup.get("periodSeconds", 10) * startup.get(
        "failureThreshold", 3
    )
    for kind, probe in probes:
        if "grpc" not in probe:
            raise CheckFailed(f"{kind} is not a gRPC probe")
        port, service = probe["grpc"]["port"], probe["grpc"].get("service", "")
        took = wait_serving(f"{pod_ip}:{port}", service, budget, process.popen)
        say(f"ok: {kind} grpc {pod_ip}:{port} service {service!r}: SERVING ({took * 1000:.0f} ms)")
    port = probes[0][1]["grpc"]["port"]
    if health(f"{pod_ip}:{port}", SERVICE) != "SERVING":
        raise CheckFailed(f"health {SERVICE} is not SERVING")
    say(f"ok: health {SERVICE}: SERVING")
    return port


def check_network_policy(
    docs: list[dict], pod: Pod, container: dict, caller: Caller | None, probe_port: int
) -> None:
    """What the NetworkPolicies let through. A pod's own containers talk over loopback, which no
    NetworkPolicy filters."""
    if not admitted(docs, pod, probe_port, None):
        raise CheckFailed(f"the NetworkPolicy does not admit the node to the probe port {probe_port}")
    if caller is None or caller.same_pod:
        return
    _, api_port = host_port(service_address(docs, pod, container, caller.address))
    if not admitted(docs, pod, api_port, caller.peer):
        raise CheckFailed(f"the NetworkPolicy does not admit caller {caller.source} to port {api_port}")
    if admitted(docs, pod, api_port, ({}, {"kubernetes.io/metadata.name": "stranger"})):
        say(f"note: the API port {api_port} is open to every pod (no NetworkPolicy restricts it)")
    else:
        say(
            f"ok: NetworkPolicy: the caller may reach {api_port}, an unlabelled pod may not; "
            f"the node may reach {probe_port}"
        )


def check_caller(docs: list[dict], pod: Pod, container: dict, caller: Caller | None, config: dict) -> None:
    """The caller, authenticated and held to its pools, without any call reaching Cognito."""
    auth = config.get("auth", {})
    if caller is None:
        say("note: no caller (COGNITO_GATEWAY_ADDR in another container of the pod, or --caller): skipped")
    elif caller.subject is not None:
        # A projected token cannot be minted without a cluster; check that the one the kubelet will
        # mint is one the gateway accepts: its audience, and its subject in [[callers]].
        jwt = auth.get("jwt", {})
        if auth.get("mode") != "jwt":
            raise CheckFailed(f"caller {caller.source}: sends a projected token, but auth.mode is not jwt")
        if caller.audience != jwt.get("audience"):
            raise CheckFailed(
                f"caller {caller.source}: audience {caller.audience!r}, "
                f"auth.jwt.audience {jwt.get('audience')!r}"
            )
        if jwt.get("caller_claim", "sub") == "sub" and caller.subject not in [
            c["name"] for c in config.get("callers", [])
        ]:
            raise CheckFailed(f"caller {caller.source}: {caller.subject} has no [[callers]] entry")
        say(
            f"ok: caller {caller.source}: audience {caller.audience!r} is auth.jwt.audience and "
            f"{caller.subject} is in [[callers]] (no call: a real token needs a cluster)"
        )
    elif caller.token is None:
        say(f"note: caller {caller.source}: no token to send here; skipped")
    else:
        address = service_address(docs, pod, container, caller.address)
        say(f"caller {caller.source}: {caller.address} -> {address}")
        token_files = (
            {auth["token_file"]: Path(auth["token_file"]).read_text()} if auth.get("token_file") else {}
        )
        name, pools = caller_policy(config, token_files, caller.token)
        if name is None:
            raise CheckFailed(f"caller {caller.source}: its token matches no [[callers]] entry")
        if pools is not None:
            expect_reset(
                f"caller {name}, a pool it may not use",
                address,
                caller.token,
                "eu-west-1_NotAllowed0",
                "PERMISSION_DENIED",
                "CALLER_NOT_ALLOWED",
            )
        pool = pools[0] if pools else "eu-west-1_Anything1"
        expect_reset(
            f"caller {name}, pool {pool}, no username",
            address,
            caller.token,
            pool,
            "INVALID_ARGUMENT",
            "INVALID_PARAMETER",
        )


def check_fleet(lines: list[str], env: dict[str, str], fleet: dict) -> None:
    """[fleet] was loaded (its files read and validated at start, or the start would have failed),
    and the checks above passed without the fleet's Redis, which is not reachable from here."""
    if not any("shared by the fleet" in line for line in lines):
        raise CheckFailed("[fleet] is configured, but the gateway never logged that the fleet shares its limits")
    url = env.get("COGNITO_GATEWAY_REDIS_URL") or fleet.get("redis_url", "")
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    # Never the URL itself: it may hold a password.
    say(
        f"ok: [fleet] loaded ({scheme}://, on_unavailable {fleet.get('on_unavailable', 'local')}); "
        "SERVING and refusing at the edge without reaching Redis"
    )


def check_logs(lines: list[str], before_sigterm: int) -> None:
    """With COGNITO_GATEWAY_LOG_FORMAT=json, log collectors parse every line. After SIGTERM the
    gateway reports telemetry flush failures with a plain line; those are shown, not failed on."""
    bad = [line for line in lines[:before_sigterm] if line.strip() and not is_json(line)]
    if bad:
        raise CheckFailed(f"{len(bad)} log lines are not JSON, first: {bad[0]}")
    levels: dict[str, int] = {}
    for line in lines:
        if is_json(line):
            record = json.loads(line)
            level = record.get("level", "?")
            levels[level] = levels.get(level, 0) + 1
            if level in ("WARN", "ERROR"):
                say(f"  log {level}: {record.get('message')}")
        elif line.strip():
            say(f"  not JSON (after SIGTERM): {line}")
    say(f"ok: every log line while serving is JSON; levels: {levels}")


def run(args: argparse.Namespace) -> bool:
    """Runs the checks; False where they had to be skipped."""
    isolated = bool(os.environ.get(ISOLATED_MARK))
    if isolated:
        set_up_network()
    pod_ip = POD_IP if isolated else "127.0.0.1"
    image = read_dockerfile(args.dockerfile)
    docs = render(args.variant)
    deployments = [
        d
        for d in docs
        if d.get("kind") == "Deployment"
        and any(c["name"] == args.container for c in pod_containers(d["spec"]["template"]["spec"]))
    ]
    if len(deployments) != 1:
        raise CheckFailed(
            f"{args.variant}: {len(deployments)} Deployments with a container {args.container}, not 1"
        )
    pod = Pod(docs, deployments[0])
    container = pod.container(args.container)
    sidecar = " (native sidecar)" if container.get("restartPolicy") == "Always" else ""
    say(
        f"{args.variant}: Deployment {pod.deployment['metadata']['name']}, "
        f"container {args.container}{sidecar}"
    )
    caller = find_caller(docs, pod, args.container, args.caller)

    if isolated:
        # The directory the outer process made (and removes), with a tmpfs of this namespace on
        # it: whatever is written goes away with the namespace.
        work = Path(os.environ[ISOLATED_MARK])
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1g", "tmpfs", str(work)], check=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="run-as-manifest-"))
        os.chmod(work, 0o755)
    try:
        rootfs = Rootfs(work)
        launch = Launch(args, pod, container, image, rootfs)
        config_path = launch.flag("--config", "COGNITO_GATEWAY_CONFIG")
        if not config_path:
            raise CheckFailed("no --config / COGNITO_GATEWAY_CONFIG")
        config = tomllib.loads(Path(config_path).read_text())
        jwks_url = config.get("auth", {}).get("jwt", {}).get("jwks_url", "")
        if not isolated and re.match(r"https://(?!127\.0\.0\.1|localhost)", jwks_url):
            # Outside a namespace of its own the gateway would fetch the keys from the network.
            say(f"SKIPPED: auth.jwt.jwks_url {jwks_url} would be fetched; needs isolation (root, unshare)")
            return False
        if launch.security.get("readOnlyRootFilesystem") is True:
            if isolated:
                count = make_read_only(rootfs.writable)
                say(
                    f"readOnlyRootFilesystem: {count} mounts read-only, {len(rootfs.writable)} emptyDir tmpfs"
                )
            else:
                say("note: readOnlyRootFilesystem not enforced (needs root and unshare)")
        network = f"own namespace, pod IP {POD_IP}" if isolated else "the host's (not isolated)"
        say(f"uid {launch.uid} gid {launch.gid} groups {launch.groups or '-'}; network: {network}")
        say("exec " + " ".join(launch.argv))
        say("env " + " ".join(sorted(launch.env)))

        process = Process(launch)
        try:
            probe_port = check_probes(container, process, pod_ip)
            host, port = host_port(launch.flag("--listen", "COGNITO_GATEWAY_LISTEN", "127.0.0.1:50051"))
            if host == "127.0.0.1" and isolated:
                if reachable(POD_IP, port):
                    raise CheckFailed(f"the API listens on loopback, yet {POD_IP}:{port} answers")
                say(f"ok: the API is loopback-only: {POD_IP}:{port} refuses")
            api = f"{pod_ip}:{port}" if host in ("0.0.0.0", "::") else f"{host}:{port}"
            expect_reset("no token", api, None, "eu-west-1_Anything1", "UNAUTHENTICATED", "UNAUTHENTICATED")
            expect_reset(
                "a wrong token",
                api,
                "not-a-token",
                "eu-west-1_Anything1",
                "UNAUTHENTICATED",
                "UNAUTHENTICATED",
            )
            check_network_policy(docs, pod, container, caller, probe_port)
            check_caller(docs, pod, container, caller, config)
            if "fleet" in config:
                check_fleet(process.lines, launch.env, config["fleet"])
        except BaseException:
            process.kill()
            raise

        before_sigterm = len(process.lines)
        code, took = process.terminate(pod.spec.get("terminationGracePeriodSeconds", 30))
        if code != 0:
            raise CheckFailed(f"exit code {code} after SIGTERM\n" + "\n".join(process.lines[-30:]))
        say(f"ok: SIGTERM -> exit 0 in {took * 1000:.0f} ms")
        if launch.env.get("COGNITO_GATEWAY_LOG_FORMAT") == "json":
            check_logs(process.lines, before_sigterm)
    finally:
        if not isolated:
            shutil.rmtree(work, ignore_errors=True)
    return True


def is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "binary", type=Path, help="the cognito-gateway binary (target/release/cognito-gateway in CI)"
    )
    parser.add_argument(
        "--variant", type=Path, default=REPO / "deploy/k8s/sidecar", help="a kustomization directory"
    )
    parser.add_argument("--container", default="cognito-gateway", help="the gateway's container name")
    parser.add_argument(
        "--caller", type=Path, help="a manifest with a caller Deployment (else: another container of the pod)"
    )
    parser.add_argument("--dockerfile", type=Path, default=REPO / "deploy/Dockerfile")
    parser.add_argument("--no-isolation", action="store_true", help="run on the host network even as root")
    args = parser.parse_args()
    args.binary = args.binary.resolve()
    try:
        import grpc  # noqa: F401
        from grpc_health.v1 import health_pb2  # noqa: F401
    except ImportError:
        print(
            "run_as_manifest: needs grpcio and grpcio-health-checking "
            "(pip install grpcio grpcio-health-checking)",
            file=sys.stderr,
        )
        return 2
    if not os.access(args.binary, os.X_OK):
        print(f"run_as_manifest: {args.binary}: not an executable file", file=sys.stderr)
        return 2

    if not os.environ.get(ISOLATED_MARK) and not args.no_isolation and can_isolate():
        return enter_isolation([str(Path(__file__).resolve()), *sys.argv[1:]])
    try:
        completed = run(args)
    except CheckFailed as error:
        print(f"run_as_manifest: FAILED: {error}", file=sys.stderr)
        return 1
    say(f"{'PASSED' if completed else 'SKIPPED'}: {args.variant}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
