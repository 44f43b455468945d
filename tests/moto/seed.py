#!/usr/bin/env python3
"""Seeds and inspects moto's Cognito for the gateway's integration suite (tests/api/moto.rs).

    seed.py ENDPOINT seed                  create a pool and its users, print JSON
    seed.py ENDPOINT status POOL USERNAME  print the user's UserStatus

The Rust tests run this with boto3 rather than through the gateway's own SDK, so the setup and
the after-the-fact checks do not depend on the code under test. Credentials must come from the
environment (the test sets fake ones on the child process only); the region is always us-east-1,
which is what the pool id's prefix tells the gateway to use.
"""

import json
import sys

import boto3

REGION = "us-east-1"
PASSWORD = "Passw0rd!Passw0rd!"

# Keys of the JSON that `seed` prints -> usernames. Each user is in one state the gateway maps
# to its own row of the error table (src/status.rs).
USERS = {
    "resettable": "alice",
    "disabled": "bob-disabled",
    "unconfirmed": "carol-unconfirmed",
    "no_verified_contact": "dave-no-contact",
    # A username Cognito accepts (letters of any script, punctuation): it must reach Cognito
    # byte-for-byte through the gRPC request, the gateway's validation and the SDK's JSON.
    "unicode": "zoë-用户",
}


def client(endpoint):
    return boto3.client("cognito-idp", region_name=REGION, endpoint_url=endpoint)


def create_user(idp, pool_id, username, email_verified=True, confirm=True):
    # SUPPRESS: no welcome message. The user starts as FORCE_CHANGE_PASSWORD.
    idp.admin_create_user(
        UserPoolId=pool_id,
        Username=username,
        MessageAction="SUPPRESS",
        UserAttributes=[
            {"Name": "email", "Value": "user@example.com"},
            {"Name": "email_verified", "Value": "true" if email_verified else "false"},
        ],
    )
    if confirm:
        # A permanent password is what moves an admin-created user to CONFIRMED.
        idp.admin_set_user_password(
            UserPoolId=pool_id, Username=username, Password=PASSWORD, Permanent=True
        )


def seed(endpoint):
    idp = client(endpoint)
    pool_id = idp.create_user_pool(PoolName="cognito-gateway-it")["UserPool"]["Id"]
    create_user(idp, pool_id, USERS["resettable"])
    create_user(idp, pool_id, USERS["disabled"])
    idp.admin_disable_user(UserPoolId=pool_id, Username=USERS["disabled"])
    create_user(idp, pool_id, USERS["unconfirmed"], confirm=False)
    create_user(idp, pool_id, USERS["no_verified_contact"], email_verified=False)
    create_user(idp, pool_id, USERS["unicode"])
    # ASCII-only JSON (\u escapes): stdout's encoding does not matter.
    print(json.dumps({"pool_id": pool_id, "users": USERS}))


def status(endpoint, pool_id, username):
    user = client(endpoint).admin_get_user(UserPoolId=pool_id, Username=username)
    print(user["UserStatus"])


def main(argv):
    if len(argv) == 3 and argv[2] == "seed":
        seed(argv[1])
    elif len(argv) == 5 and argv[2] == "status":
        status(argv[1], argv[3], argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
