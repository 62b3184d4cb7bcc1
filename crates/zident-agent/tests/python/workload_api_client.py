"""A Workload API client nobody here wrote: the Python `spiffe` package and plain `grpcio`
(gRPC C-core), which send the socket path as the HTTP/2 :authority over a Unix socket.

Usage: workload_api_client.py SOCKET_PATH EXPECTED_SPIFFE_ID DEADLINE_SECONDS

Prints one line per check, `ok <check> <detail>`, and exits non-zero at the first failure.
"""

import sys
import threading
import time

import grpc
from spiffe import WorkloadApiClient

socket_path, expected_id, deadline_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
endpoint = f"unix:{socket_path}"


def fail(check, detail):
    print(f"FAIL {check} {detail}", flush=True)
    sys.exit(1)


client = WorkloadApiClient(socket_path=endpoint)

# FetchX509SVID: the workload's own SVID.
svid = client.fetch_x509_svid(timeout=deadline_s)
if str(svid.spiffe_id) != expected_id:
    fail("fetch_x509_svid", f"got {svid.spiffe_id}, wanted {expected_id}")
first_serial = svid.leaf.serial_number
print(f"ok fetch_x509_svid {svid.spiffe_id} {first_serial:x}", flush=True)

# FetchX509Bundles: the trust domain's bundle.
bundles = client.fetch_x509_bundles(timeout=deadline_s)
tds = sorted(str(b.trust_domain) for b in bundles.bundles)
if not tds:
    fail("fetch_x509_bundles", "no bundle")
print(f"ok fetch_x509_bundles {','.join(tds)}", flush=True)

# A rotation seen on the stream: a context with another serial.
rotated = threading.Event()
errors = []


def on_success(ctx):
    serial = ctx.default_svid.leaf.serial_number
    if serial != first_serial:
        print(f"ok rotation {serial:x}", flush=True)
        rotated.set()


handle = client.stream_x509_contexts(on_success, errors.append, retry_connect=False)
if not rotated.wait(deadline_s):
    fail("rotation", f"no new serial within {deadline_s}s; errors: {errors}")
handle.cancel()
client.close()

# Plain grpcio: the same call by name, without the spiffe package.
channel = grpc.insecure_channel(endpoint)
fetch = channel.unary_stream(
    "/SpiffeWorkloadAPI/FetchX509SVID",
    request_serializer=lambda _: b"",
    response_deserializer=lambda raw: raw,
)
stream = fetch(None, metadata=[("workload.spiffe.io", "true")], timeout=deadline_s)
first = next(stream)
if not first:
    fail("grpcio", "an empty first message")
stream.cancel()
print(f"ok grpcio {len(first)} bytes", flush=True)

# Without the security header: refused with InvalidArgument.
try:
    next(fetch(None, timeout=deadline_s))
    fail("missing_header", "answered without workload.spiffe.io")
except grpc.RpcError as e:
    if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
        fail("missing_header", f"got {e.code()}: {e.details()}")
    print(f"ok missing_header {e.code().name}", flush=True)
channel.close()
