"""Validates the configurations the repository ships against docs/config.schema.json (the JSON
Schema `cognito-gateway config-schema` prints), as an editor or another CI would: the TOML inside
every variant's gateway.toml in deploy/k8s and the README's reference file. Then checks that the schema refuses
what serde refuses (an unknown key, a wrong type, an unknown enum value, a missing required key),
naming the key. `check-config` itself runs on the same files in tests/api/shipped_config.rs.

    python3 .ci/config_schema.py      # from the repository root; needs jsonschema
"""
import copy
import glob
import json
import re
import sys
import tomllib

import jsonschema

schema = json.load(open("docs/config.schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)


def problems(config):
    """Each error as (dotted key, message)."""
    return [(".".join(str(p) for p in error.absolute_path), error.message)
            for error in validator.iter_errors(config)]


shipped = {}
for path in sorted(glob.glob("deploy/k8s/*/gateway.toml")):
    shipped[path] = tomllib.loads(open(path).read())
assert len(shipped) >= 3, f"expected every variant's gateway.toml, found {sorted(shipped)}"
readme = re.search(r"^## Configuration$.*?^```toml\n(.*?)^```", open("README.md").read(), re.S | re.M)
shipped["README.md (Configuration)"] = tomllib.loads(readme.group(1))

failed = False
for path, config in shipped.items():
    found = problems(config)
    for key, message in found:
        print(f"FAIL {path}: {key}: {message}")
    failed |= bool(found)
    if not found:
        print(f"ok: {path} is valid against docs/config.schema.json")
if failed:
    sys.exit(1)


def broken(change):
    config = copy.deepcopy(shipped["deploy/k8s/shared/gateway.toml"])
    change(config)
    return config


# Each broken file must be refused, and the error must name the key at fault.
cases = [
    ("an unknown key", lambda c: c["limits"].update(backend_rsp=5), "limits", "backend_rsp"),
    ("a wrong type", lambda c: c["limits"].update(backend_rps="5"), "limits.backend_rps", ""),
    ("an unknown mode", lambda c: c["auth"].update(mode="password"), "auth.mode", ""),
    ("a negative count", lambda c: c["server"].update(max_connections=-1), "server.max_connections", ""),
    ("a missing required key", lambda c: c["fleet"].pop("user_key_secret_file"), "fleet", "user_key_secret_file"),
    ("an unknown section", lambda c: c.update(limit={}), "", "limit"),
]
for what, change, key, named in cases:
    found = problems(broken(change))
    if not any(k == key and named in m for k, m in found):
        print(f"FAIL: {what} ({key or 'top level'}) is not refused by name: {found}")
        failed = True
    else:
        print(f"ok: {what} is refused: {key or 'top level'}: {found[0][1]}")
sys.exit(1 if failed else 0)
