#!/usr/bin/env python3
"""Writes the committed seed corpus (fuzz/corpus/<target>/): a handful of meaningful inputs per
target. Run from fuzz/: python3 make_seeds.py. The evolved corpus of a long run is not committed."""
import json, os, struct

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(num, data):
    data = data.encode() if isinstance(data, str) else data
    return varint(num << 3 | 2) + varint(len(data)) + data

def request(pool, user, metadata=(), request_id=""):
    out = field(1, pool) + field(2, user)
    for k, v in metadata:
        out += field(3, field(1, k) + field(2, v))
    if request_id:
        out += field(4, request_id)
    return out

def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    data = data.encode() if isinstance(data, str) else data
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)

# request: valid and invalid requests, as a caller's client encodes them.
write("request", "valid", request("us-east-1_AbCdEf123", "Jane.Doe@example.com", [("tenant_name", "Tenant-42")]))
write("request", "valid-request-id", request("eu-west-1_x", "zoë", [], "123E4567-E89B-12D3-A456-426614174000"))
write("request", "unicode-username", request("local-1_DemoPool", "用户😀e\u0301", [("k", "ab"), ("long-key", "secret-value")]))
write("request", "every-field-invalid", request("", "a b@example.com", [("", "v")], "not-a-uuid"))
write("request", "pool-too-long", request("r_" + "a" * 60, "x" * 130 + "@e.com"))
write("request", "username-like-mask", request("us-east-1_Abc", "<username>", [("name", "user")]))

# cognito_response: Cognito's real replies (FACTS.md), and unusual ones.
def reply(status, headers, body, canonical=False):
    head = f"{status}{' canonical' if canonical else ''}\n" + "".join(f"{k}: {v}\n" for k, v in headers)
    return head + "\n" + body

json_type = ("Content-Type", "application/x-amz-json-1.1")
rid = ("x-amzn-RequestId", "3f1c9a2e-1111-2222-3333-444455556666")
def err(code, message, status=400, canonical=False):
    return reply(status, [json_type, rid, ("x-amzn-ErrorType", f"{code}:http://internal.amazon.com/coral/com.amazonaws.cognito.identity.idp.model/")],
                 json.dumps({"__type": f"com.amazonaws.cognito.identity.idp.model#{code}", "message": message}), canonical)
write("cognito_response", "ok", reply(200, [json_type, rid], "{}"))
write("cognito_response", "describe-case-insensitive", reply(200, [json_type, rid], json.dumps({"UserPool": {"Id": "us-east-1_Fuzz1", "UsernameConfiguration": {"CaseSensitive": False}}})))
write("cognito_response", "admin-get-user", reply(200, [json_type, rid], json.dumps({"Username": "x", "UserAttributes": [{"Name": "sub", "Value": "0b1c"}]}), canonical=True))
write("cognito_response", "user-not-found", err("UserNotFoundException", "User does not exist."))
write("cognito_response", "no-verified-contact", err("InvalidParameterException", "Cannot reset password for the user as there is no registered/verified email or phone_number"))
write("cognito_response", "invalid-parameter-echo", err("InvalidParameterException", "1 validation error detected: Value 'JANE.DOE@EXAMPLE.COM' at 'username' failed to satisfy constraint; clientMetadata Tenant-42-secret"))
write("cognito_response", "lambda-echo", err("UserLambdaValidationException", "PreForgotPassword failed with error jane.doe@example.com is blocked (tenant_name=Tenant-42-secret)."))
write("cognito_response", "limit-exceeded", err("LimitExceededException", "Attempt limit exceeded, please try after some time."))
write("cognito_response", "throttled", err("TooManyRequestsException", "Rate exceeded"))
write("cognito_response", "internal-error", err("InternalErrorException", "Internal error", status=500))
write("cognito_response", "access-denied", err("AccessDeniedException", "User: arn:aws:iam::1:role/x is not authorized"))
write("cognito_response", "body-type-only", reply(400, [json_type], json.dumps({"__type": "NotAuthorizedException", "message": "User is disabled."})))
write("cognito_response", "html-502", reply(502, [("Content-Type", "text/html")], "<html><body>Bad Gateway {upstream}</body></html>"))
write("cognito_response", "non-utf8-headers", b"400\nx-amzn-RequestId: r\xff\xfe\nx-amzn-ErrorType: User\xffNotFoundException\n\n" + json.dumps({"__type": "UserNotFoundException", "message": "User does not exist."}).encode())
write("cognito_response", "garbage-200", reply(200, [json_type], "{\"UserPool\": [1, 2"))

# config: the README's and the shapes of gateway.toml, with a token file.
write("config", "token-file", """[auth]
mode = "token"
token_file = "@TOKEN_FILE@"

[[callers]]
name = "billing"
user_pools = ["us-east-1_AbCdEf123"]
rate_per_second = 5
burst = 10

[[callers]]
name = "support"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
user_pools = ["*"]

[limits]
backend_rps = 20
user_cooldown_secs = 30
user_identity = "canonical"

[cognito]
operation_timeout_ms = 4000
allowed_regions = ["us-east-1", "eu-west-1"]
#--token-file--
billing = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
""")
write("config", "none-and-server", """[auth]
mode = "none"

[server]
max_concurrent_streams = 100
request_timeout_secs = 10
shutdown_grace_secs = 30
max_connection_age_secs = 300
""")
write("config", "jwt", """[auth]
mode = "jwt"
reload_interval_secs = 10

[auth.jwt]
issuer = "https://kubernetes.default.svc.cluster.local"
audience = "cognito-gateway"
jwks_url = "https://127.0.0.1:8443/openid/v1/jwks"
leeway_secs = 30

[[callers]]
name = "system:serviceaccount:billing:api"
user_pools = ["us-east-1_AbCdEf123", "eu-west-1_Z"]
""")
write("config", "fleet", """[auth]
mode = "none"

[fleet]
redis_url = "redis://127.0.0.1:6379/0"
key_prefix = "cognito-gateway"
user_key_secret_file = "@TOKEN_FILE@"
timeout_ms = 50
on_unavailable = "deny"
replicas_hint = 3
#--token-file--
0123456789abcdef0123456789abcdef0123456789abcdef
""")
write("config", "empty", "")

# jwt: authorization headers, and header/claims pairs the target signs.
now_claims = {"iss": "https://issuer.example", "aud": ["cognito-gateway"], "sub": "billing", "iat": 1700000000, "nbf": 1700000000, "exp": 4102444800}
write("jwt", "signed-es256", b"S" + json.dumps({"alg": "ES256", "kid": "ec-1", "typ": "JWT"}).encode() + b"\n" + json.dumps(now_claims).encode())
write("jwt", "signed-rs256-no-kid", b"S" + json.dumps({"alg": "RS256"}).encode() + b"\n" + json.dumps(dict(now_claims, aud="cognito-gateway")).encode())
write("jwt", "signed-hs256", b"S" + json.dumps({"alg": "HS256", "kid": "ec-1"}).encode() + b"\n" + json.dumps(now_claims).encode())
write("jwt", "signed-expired", b"S" + json.dumps({"alg": "ES256", "kid": "ec-1"}).encode() + b"\n" + json.dumps(dict(now_claims, exp=1700000000)).encode())
write("jwt", "signed-unknown-kid", b"S" + json.dumps({"alg": "ES256", "kid": "gone"}).encode() + b"\n" + json.dumps(dict(now_claims, sub=7)).encode())
write("jwt", "header-none", b"TBearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJiaWxsaW5nIn0.")
write("jwt", "header-garbage", b"Tbearer   a.b.c  ")

# jwks: the test keys, and keys the selection must ignore.
write("jwks", "test-keys", open("keys/jwks.json").read())
keys = json.load(open("keys/jwks.json"))["keys"]
write("jwks", "mixed", json.dumps({"keys": [
    {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "ec-1"},
    dict(keys[0], use="enc"),
    dict(keys[1], alg="RS512"),
    {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
    dict(keys[0], kid=None),
]}))
write("jwks", "empty", '{"keys": []}')

# metadata: header values and paths.
for name, value in [("timeout-ms", "250m"), ("timeout-plus", "+50m"), ("timeout-hours", "99999999H"),
                    ("timeout-9-digits", "123456789n"), ("bearer", "Bearer s3cret-token"),
                    ("bearer-padded", "bEaReR \t s3cret-token \t"), ("bearer-empty", "Bearer    "),
                    ("path", "cognitogateway.v1.UserAdminService/ResetUserPassword"),
                    ("health", "grpc.health.v1.Health/Check"),
                    ("request-id", "123E4567-E89B-12D3-A456-426614174000")]:
    write("metadata", name, value)
