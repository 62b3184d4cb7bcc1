"""JWT-SVIDs with clients nobody here wrote: the Python `spiffe` package fetches a token and the
JWT bundles from the agent's Workload API and validates the token with them, asks the agent to
validate it, and PyJWT verifies it with the key it finds in the CA's `/bundle` (the SPIFFE
bundle document, fetched over TLS as an OIDC relying party would).

Usage: jwt_client.py SOCKET_PATH EXPECTED_SPIFFE_ID CA_BUNDLE_URL CA_ROOT_PEM DEADLINE_SECONDS

Prints one line per check, `ok <check> <detail>`, and exits non-zero at the first failure.
"""

import json
import ssl
import sys
import time
import urllib.request

import jwt
from spiffe import WorkloadApiClient, TrustDomain
from spiffe.svid.jwt_svid import JwtSvid

socket_path, expected_id, bundle_url, root_pem, deadline_s = sys.argv[1:6]
deadline_s = float(deadline_s)
client = WorkloadApiClient(socket_path=f"unix:{socket_path}")


def fail(check, detail):
    print(f"FAIL {check} {detail}", flush=True)
    sys.exit(1)


# FetchJWTSVID, retried while the agent's first certificate is on its way.
until = time.monotonic() + deadline_s
while True:
    try:
        svid = client.fetch_jwt_svid(audience={"billing"})
        break
    except Exception as e:  # noqa: BLE001 - any failure is retried until the deadline
        if time.monotonic() > until:
            fail("fetch_jwt_svid", e)
        time.sleep(0.2)
if str(svid.spiffe_id) != expected_id:
    fail("fetch_jwt_svid", f"got {svid.spiffe_id}, wanted {expected_id}")
print(f"ok fetch_jwt_svid {svid.spiffe_id}", flush=True)

# FetchJWTBundles, and the package's own validation of the token with them.
bundles = client.fetch_jwt_bundles()
bundle = bundles.get_bundle_for_trust_domain(TrustDomain("cluster.local"))
if bundle is None:
    fail("fetch_jwt_bundles", "no bundle for cluster.local")
checked = JwtSvid.parse_and_validate(svid.token, bundle, {"billing"})
print(f"ok parse_and_validate {checked.spiffe_id}", flush=True)

# ValidateJWTSVID by the agent; a wrong audience is refused.
client.validate_jwt_svid(svid.token, "billing")
try:
    client.validate_jwt_svid(svid.token, "someone-else")
    fail("validate_wrong_audience", "accepted")
except Exception as e:  # noqa: BLE001
    print(f"ok validate_wrong_audience {type(e).__name__}", flush=True)
print("ok validate_jwt_svid", flush=True)

# PyJWT with the key from the CA's SPIFFE bundle document.
ctx = ssl.create_default_context(cafile=root_pem)
ctx.check_hostname = False
with urllib.request.urlopen(bundle_url, context=ctx, timeout=deadline_s) as r:
    document = json.load(r)
kid = jwt.get_unverified_header(svid.token)["kid"]
keys = [k for k in document["keys"] if k.get("use") == "jwt-svid" and k.get("kid") == kid]
if len(keys) != 1:
    fail("pyjwt", f"kid {kid} not in /bundle: {document}")
key = jwt.PyJWK(keys[0], algorithm="ES256")
claims = jwt.decode(svid.token, key, algorithms=["ES256"], audience="billing")
if claims["sub"] != expected_id:
    fail("pyjwt", f"sub {claims['sub']}")
print(f"ok pyjwt {claims['sub']}", flush=True)
try:
    jwt.decode(svid.token, key, algorithms=["ES256"], audience="other")
    fail("pyjwt_wrong_audience", "accepted")
except jwt.InvalidAudienceError:
    print("ok pyjwt_wrong_audience", flush=True)
client.close()
