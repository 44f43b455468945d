#!/usr/bin/env python3
"""Runs the gateway's image with podman as the manifests run it, and as AWS would be reached.

    python3 deploy/run_image.py IMAGE kube VARIANT_DIR [CALLER_FILE]
    python3 deploy/run_image.py IMAGE aws

deploy/image.sh builds IMAGE and calls this with CONTAINERS_CONF set (runc, cgroupfs).

`kube`: the variant rendered by `kubectl kustomize`, played by `podman kube play` with the
manifest's own securityContext (user, read-only root, capabilities, no privilege escalation),
memory limit, volumes, args and environment. podman 4.3 cannot take a few things a kubelet
does; each is done here the kubelet's way, or checked elsewhere:
- a native sidecar (an initContainer with restartPolicy: Always) runs as a plain container; the
  ordering the kubelet gives it is checked by deploy/check.sh, not here;
- Secret volumes become host directories holding the Secret's keys with the volume's modes and
  the pod's fsGroup (podman 4.3's kube play crashes on Secret volumes); ConfigMap volumes are
  podman's own;
- env from Secrets and status.hostIP, and $(VAR) references, are resolved to literal values
  (hostIP is the pod's own loopback: nothing listens for OTLP there);
- gRPC probes are dropped; this script asks the health port itself;
- containers other than the gateway (the application stand-in, a pause image) are dropped: they
  cannot be pulled here. Their part, calling the gateway, is played by a container of IMAGE joined
  to the pod, running `cognito-gateway reset` with the caller's token from its Secret;
- the manifests point at AWS. The gateway runs `serve --local` instead (the embedded Cognito), and
  the pools and regions in its config are replaced by the local demo pool's.
Then: health SERVING on the health port through a port published on 127.0.0.1; without a token
UNAUTHENTICATED; with the caller's token one reset OK (JWT: a token cannot be minted here, so
UNAUTHENTICATED); SIGTERM: exit 0, every log line JSON.

`aws`: the gateway in IMAGE, not local, reaching a Cognito as it reaches AWS: the endpoint's name
`cognito-idp.eu-west-1.amazonaws.com` resolved by DNS inside the container (a resolver on
loopback that answers 127.0.0.1; the static binary has no glibc NSS modules), HTTPS verified
against the CA bundle at the path the image keeps its roots (a test CA mounted over it; image.sh
checks the image's own bundle), signed requests to moto. One reset OK, and moto's user is then
RESET_REQUIRED.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

LOCAL_POOL = "local-1_DemoPool"  # src/local.rs DEMO_POOL_ID
LOCAL_REGION = "local-1"
DEMO_USER = "alice"  # src/local.rs: resettable
GATEWAY = "cognito-gateway"  # the container's name in every variant


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"run_image: {message}", flush=True)


def podman(*args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise CheckFailed(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int, timeout: float = 30) -> str:
    """The overall health status, waiting (bounded) for the listener to come up."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


# --- kube -------------------------------------------------------------------------------------------


def secret_data(doc: dict) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (doc.get("stringData") or {}).items()})
    return data


def find(docs: list[dict], kind: str, name: str) -> dict:
    for doc in docs:
        if doc.get("kind") == kind and doc["metadata"]["name"] == name:
            return doc
    raise CheckFailed(f"{kind} {name} is not in the manifests")


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: known names only, $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def local_config(toml: str) -> str:
    """The manifest's gateway.toml on the local Cognito: its pools and regions become the demo's."""
    pools = re.findall(r"\b[a-z]{2}-[a-z]+-\d_[0-9A-Za-z]+\b", toml)
    regions = re.search(r"^allowed_regions = \[.*\]$", toml, flags=re.M)
    if not pools or not regions:
        raise CheckFailed("gateway.toml names no pool or no cognito.allowed_regions: update local_config()")
    for pool in set(pools):
        toml = toml.replace(pool, LOCAL_POOL)
    return toml.replace(regions.group(0), f'allowed_regions = ["{LOCAL_REGION}"]')


def pod_for_podman(docs: list[dict], image: str, work: Path) -> tuple[list[dict], dict]:
    """The gateway's pod as podman 4.3 can play it (the module's docstring says what changes)."""
    deployment = next(
        d for d in docs
        if d.get("kind") == "Deployment"
        and any(c["name"] == GATEWAY for c in d["spec"]["template"]["spec"].get("initContainers", []) + d["spec"]["template"]["spec"]["containers"])
    )
    namespace = deployment["metadata"].get("namespace", "default")
    name = deployment["metadata"]["name"]
    spec = json.loads(json.dumps(deployment["spec"]["template"]["spec"]))
    gateway = next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == GATEWAY)
    gateway.pop("restartPolicy", None)
    spec.pop("initContainers", None)
    spec["containers"] = [gateway]
    gateway["image"] = image
    gateway["args"] = gateway["args"] + ["--local"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        gateway.pop(probe, None)
    # Only the pod's own volumes the gateway mounts.
    mounted = {m["name"] for m in gateway.get("volumeMounts", [])}
    spec["volumes"] = [v for v in spec.get("volumes", []) if v["name"] in mounted]

    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    config_maps = []
    for volume in spec["volumes"]:
        if "configMap" in volume:
            cm = json.loads(json.dumps(find(docs, "ConfigMap", volume["configMap"]["name"])))
            cm["data"] = {k: local_config(v) if k.endswith(".toml") else v for k, v in cm["data"].items()}
            config_maps.append(cm)
        elif "secret" in volume:
            source = volume.pop("secret")
            data = secret_data(find(docs, "Secret", source["secretName"]))
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            directory = work / "secrets" / volume["name"]
            directory.mkdir(parents=True)
            for item in items:
                path = directory / item["path"]
                path.write_bytes(data[item["key"]])
                os.chmod(path, item.get("mode", source.get("defaultMode", 0o644)))
                if fs_group is not None:
                    os.chown(path, 0, fs_group)
            volume["hostPath"] = {"path": str(directory), "type": "Directory"}
        else:
            raise CheckFailed(f"volume {volume['name']}: only ConfigMap and Secret volumes are converted")

    # Environment: literal values, as the kubelet hands them to the container.
    env: dict[str, str] = {}
    for var in gateway.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            value = expand(var["value"], env)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = secret_data(find(docs, "Secret", ref["name"]))[ref["key"]].decode()
        elif "fieldRef" in source:
            value = {
                "metadata.name": name,
                "metadata.namespace": namespace,
                "status.hostIP": "127.0.0.1",
                "status.podIP": "127.0.0.1",
            }[source["fieldRef"]["fieldPath"]]
        else:
            raise CheckFailed(f"env {var['name']}: unsupported valueFrom {source}")
        env[var["name"]] = value
    gateway["env"] = [{"name": k, "value": v} for k, v in env.items()]

    # Every port published on loopback only.
    published = {}
    for port in gateway.get("ports", []):
        port["hostPort"] = published[port["name"]] = free_port()
        port["hostIP"] = "127.0.0.1"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": deployment["spec"]["template"]["metadata"].get("labels", {})}, "spec": spec}
    limit = gateway["resources"]["limits"]["memory"]
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    memory_limit = int(limit[:-2]) * units[limit[-2:]] if limit[-2:] in units else int(limit)
    return config_maps + [pod], {"name": name, "ports": published, "args": gateway["args"], "env": env, "memory_limit": memory_limit}


def caller(docs: list[dict], caller_docs: list[dict]) -> tuple[bytes | None, str]:
    """The caller's token (None: a projected JWT, which cannot be minted here) and whom it names."""
    for doc in docs + caller_docs:
        if doc.get("kind") != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            if "COGNITO_GATEWAY_TOKEN_FILE" not in env:
                continue
            token_path = Path(env["COGNITO_GATEWAY_TOKEN_FILE"]["value"])
            mount = next(m for m in c["volumeMounts"] if token_path.parent == Path(m["mountPath"]))
            volume = next(v for v in doc["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
            if "secret" in volume:
                return secret_data(find(docs + caller_docs, "Secret", volume["secret"]["secretName"]))[token_path.name], c["name"]
            return None, c["name"]
    raise CheckFailed("no caller: no container sets COGNITO_GATEWAY_TOKEN_FILE")


def check_kube(image: str, variant: Path, caller_file: Path | None) -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(variant)], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    caller_docs = [d for d in yaml.safe_load_all(caller_file.read_text()) if d] if caller_file else []
    with tempfile.TemporaryDirectory(prefix="run-image-") as tmp:
        work = Path(tmp)
        played, pod = pod_for_podman(docs, image, work)
        manifest = work / "pod.yaml"
        manifest.write_text(yaml.safe_dump_all(played))
        podman("kube", "play", str(manifest))
        container = f"{pod['name']}-{GATEWAY}"
        try:
            check_security(container, pod["memory_limit"])
            api_port = int(pod["args"][pod["args"].index("--listen") + 1].rsplit(":", 1)[1])
            status = health(pod["ports"]["health"])
            if status != "SERVING":
                raise CheckFailed(f"health on the health port: {status}")
            say(f"{variant}: health SERVING on its health port (published on 127.0.0.1:{pod['ports']['health']})")
            token, name = caller(docs, caller_docs)
            check_calls(image, pod["name"], work, api_port, token, name)
            # While serving (at exit, a failed OTLP flush may print a plain line of its own), less
            # the plain banner `--local` prints for people (src/main.rs), which ends at a blank line.
            logged = podman("logs", container)
            text = re.sub(r"^LOCAL MODE: embedded.*?\n\n", "", logged.stdout + logged.stderr, flags=re.S | re.M)
            lines = [line for line in text.splitlines() if line.strip()]
            if not lines or not all(line.startswith("{") and json.loads(line) for line in lines):
                raise CheckFailed("COGNITO_GATEWAY_LOG_FORMAT=json: a log line is not JSON:\n" + "\n".join(lines))
            podman("pod", "stop", "--time", "30", pod["name"], timeout=60)
            exit_code = podman("inspect", container, "--format", "{{.State.ExitCode}}").stdout.strip()
            if exit_code != "0":
                raise CheckFailed(f"SIGTERM: exit code {exit_code}")
            say(f"{variant}: {len(lines)} log lines while serving, all JSON; SIGTERM: exit 0")
        except BaseException:
            print(podman("logs", container, check=False).stderr[-4000:], file=sys.stderr)
            raise
        finally:
            podman("kube", "down", str(manifest), check=False)


def check_security(container: str, memory_limit: int) -> None:
    """What podman made of the manifest's securityContext, mounts and memory limit."""
    info = json.loads(podman("inspect", container).stdout)[0]
    host = info["HostConfig"]
    found = {
        "memory limit": host["Memory"],
        "user": info["Config"]["User"],
        "read-only root": host["ReadonlyRootfs"],
        "capabilities": info["EffectiveCaps"] or [],
        "no-new-privileges": "no-new-privileges" in (host.get("SecurityOpt") or []),
        "writable mounts": [m["Destination"] for m in info["Mounts"] if m["RW"]],
    }
    wanted = {"memory limit": memory_limit, "user": "65532:65532", "read-only root": True, "capabilities": [], "no-new-privileges": True, "writable mounts": []}
    if found != wanted:
        raise CheckFailed(f"{container}: runs with {found}, the manifest says {wanted}")
    say(f"{container}: user 65532:65532, read-only root, no capabilities, no-new-privileges, read-only mounts, memory limit {memory_limit >> 20} MiB")


def reset_from_pod(image: str, pod: str, work: Path, port: int, token: bytes | None) -> subprocess.CompletedProcess:
    """`cognito-gateway reset` in a container of IMAGE joined to the pod: its loopback is the pod's."""
    args = ["run", "--rm", "--pod", pod, "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "65535:65535"]
    if token is not None:
        token_dir = work / "caller"
        token_dir.mkdir(exist_ok=True)
        (token_dir / "token").write_bytes(token)
        os.chmod(token_dir / "token", 0o444)
        args += ["--volume", f"{token_dir}:/var/run/secrets/cognito-gateway:ro", "--env", "COGNITO_GATEWAY_TOKEN_FILE=/var/run/secrets/cognito-gateway/token"]
    args += [image, "reset", "--addr", f"http://127.0.0.1:{port}", "--user-pool-id", LOCAL_POOL, "--username", DEMO_USER]
    return podman(*args, check=False)


def check_calls(image: str, pod: str, work: Path, port: int, token: bytes | None, name: str) -> None:
    anonymous = reset_from_pod(image, pod, work, port, None)
    if anonymous.returncode == 0 or "UNAUTHENTICATED" not in anonymous.stderr:
        raise CheckFailed(f"a call without a token: {anonymous.stdout}{anonymous.stderr}")
    say("a call without a token: UNAUTHENTICATED")
    if token is None:
        say(f"{name} authenticates with a projected service-account token, which cannot be minted here: no OK reset")
        return
    answer = reset_from_pod(image, pod, work, port, token)
    if answer.returncode != 0 or not answer.stdout.startswith("OK: password reset"):
        raise CheckFailed(f"reset with {name}'s token: exit {answer.returncode}: {answer.stdout}{answer.stderr}")
    say(f"reset with {name}'s token, from inside the pod to 127.0.0.1:{port}: {answer.stdout.strip()}")


# --- aws --------------------------------------------------------------------------------------------


def serve_dns(address: str) -> None:
    """Answers every A query with 127.0.0.1 and every other query with no record, on UDP port 53."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))

    def loop() -> None:
        while True:
            query, peer = sock.recvfrom(512)
            end = 12
            while query[end]:
                end += 1 + query[end]
            qtype = struct.unpack(">H", query[end + 1:end + 3])[0]
            answer = b""
            if qtype == 1:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
            header = struct.pack(">HHHHHH", struct.unpack(">H", query[:2])[0], 0x8180, 1, 1 if answer else 0, 0, 0)
            sock.sendto(header + query[12:end + 5] + answer, peer)

    threading.Thread(target=loop, daemon=True).start()


def check_aws(image: str) -> None:
    import boto3  # .ci/run installs it with moto

    host = "cognito-idp.eu-west-1.amazonaws.com"
    with tempfile.TemporaryDirectory(prefix="run-image-") as tmp:
        work = Path(tmp)
        # A CA and the endpoint's certificate, signed by it.
        openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        subprocess.run([*openssl, "-subj", "/CN=run_image test CA", "-keyout", work / "ca.key", "-out", work / "ca.pem"], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", work / "server.key", "-out", work / "server.csr"], check=True, capture_output=True)
        (work / "ext").write_text(f"subjectAltName=DNS:{host},IP:127.0.0.1\n")
        subprocess.run(["openssl", "x509", "-req", "-in", work / "server.csr", "-CA", work / "ca.pem", "-CAkey", work / "ca.key", "-CAcreateserial", "-days", "1", "-extfile", work / "ext", "-out", work / "server.pem"], check=True, capture_output=True)
        os.chmod(work / "ca.pem", 0o444)
        os.chmod(work, 0o755)

        moto_port, gateway_port = free_port(), free_port()
        moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(moto_port), "-c", work / "server.pem", "-k", work / "server.key"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        resolver = "127.0.53.53"
        serve_dns(resolver)
        name = "run-image-aws"
        try:
            endpoint = f"https://{host}:{moto_port}"
            credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "eu-west-1"}
            cognito = boto3.client("cognito-idp", endpoint_url=f"https://127.0.0.1:{moto_port}", verify=str(work / "ca.pem"), region_name="eu-west-1", aws_access_key_id="testing", aws_secret_access_key="testing")
            wait_for_moto(cognito)
            pool = cognito.create_user_pool(PoolName="run-image")["UserPool"]["Id"]
            cognito.admin_create_user(UserPoolId=pool, Username=DEMO_USER, MessageAction="SUPPRESS", UserAttributes=[{"Name": "email", "Value": "alice@example.com"}, {"Name": "email_verified", "Value": "true"}])
            cognito.admin_set_user_password(UserPoolId=pool, Username=DEMO_USER, Password="Passw0rd!Passw0rd", Permanent=True)
            (work / "gateway.toml").write_text('[auth]\nmode = "none"\n\n[cognito]\nallowed_regions = ["eu-west-1"]\n')
            os.chmod(work / "gateway.toml", 0o444)
            env = {**credentials, "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER": endpoint, "COGNITO_GATEWAY_CONFIG": "/etc/cognito-gateway/config/gateway.toml", "COGNITO_GATEWAY_LOG_FORMAT": "json"}
            podman(
                "run", "--detach", "--name", name, "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "65532:65532",
                # The host's network, so that moto on loopback is reachable; resolv.conf names our
                # resolver. The image's CA bundle is replaced by the test CA at the same path.
                "--network", "host", "--dns", resolver,
                "--volume", f"{work / 'gateway.toml'}:/etc/cognito-gateway/config/gateway.toml:ro",
                "--volume", f"{work / 'ca.pem'}:/etc/ssl/certs/ca-certificates.crt:ro",
                *[arg for key, value in env.items() for arg in ("--env", f"{key}={value}")],
                image, "serve", "--listen", f"127.0.0.1:{gateway_port}",
            )
            try:
                status = health(gateway_port)
                if status != "SERVING":
                    raise CheckFailed(f"health: {status}")
                answer = podman("run", "--rm", "--network", "host", "--read-only", "--cap-drop", "ALL", "--user", "65532:65532", image, "reset", "--addr", f"http://127.0.0.1:{gateway_port}", "--user-pool-id", pool, "--username", DEMO_USER, check=False)
                if answer.returncode != 0 or not answer.stdout.startswith("OK: password reset"):
                    raise CheckFailed(f"reset through DNS and TLS: exit {answer.returncode}: {answer.stdout}{answer.stderr}")
                user = cognito.admin_get_user(UserPoolId=pool, Username=DEMO_USER)
                if user["UserStatus"] != "RESET_REQUIRED":
                    raise CheckFailed(f"moto's user is {user['UserStatus']} after an OK reset")
                say(f"{host} resolved by DNS in the image, HTTPS verified against the roots at the image's path, signed call to moto: {answer.stdout.strip()}; the user is RESET_REQUIRED")
            except BaseException:
                print(podman("logs", name, check=False).stderr[-4000:], file=sys.stderr)
                raise
            finally:
                podman("rm", "--force", "--time", "5", name, check=False)
        finally:
            moto.terminate()
            moto.wait()


def wait_for_moto(cognito) -> None:
    import botocore.exceptions

    # moto has no readiness signal but its port: ask until it answers, for 30 s at most.
    for _ in range(300):
        try:
            cognito.list_user_pools(MaxResults=1)
            return
        except botocore.exceptions.EndpointConnectionError:
            threading.Event().wait(0.1)
    raise CheckFailed("moto_server did not answer within 30 s")


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] not in ("kube", "aws"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    image, mode = sys.argv[1], sys.argv[2]
    try:
        if mode == "kube":
            check_kube(image, Path(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) > 4 else None)
        else:
            check_aws(image)
    except CheckFailed as failure:
        print(f"run_image: FAIL: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
