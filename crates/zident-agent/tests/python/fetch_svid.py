"""Asks a Workload API socket for an X509-SVID with the Python `spiffe` package, as whatever
process runs it (the test runs it in a network namespace, or as another user).

Usage: fetch_svid.py SOCKET_PATH [--stream SECONDS]

Prints `id <SPIFFE ID>` on success, or `refused <message>` when the agent refuses the caller.
With --stream, it then keeps the stream open and prints `ended` when the agent ends it.
"""

import sys
import threading

from spiffe import WorkloadApiClient

socket_path = sys.argv[1]
client = WorkloadApiClient(socket_path=f"unix:{socket_path}")
try:
    svid = client.fetch_x509_svid(timeout=10)
except Exception as e:  # the package wraps the gRPC status in its own error
    print(f"refused {e}", flush=True)
    sys.exit(0)
print(f"id {svid.spiffe_id}", flush=True)

if len(sys.argv) > 3 and sys.argv[2] == "--stream":
    ended = threading.Event()
    handle = client.stream_x509_contexts(
        lambda ctx: None, lambda err: ended.set(), retry_connect=False
    )
    print("streaming", flush=True)
    if ended.wait(float(sys.argv[3])):
        print("ended", flush=True)
    handle.cancel()
client.close()
