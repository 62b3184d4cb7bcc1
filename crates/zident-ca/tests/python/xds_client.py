"""An xDS client nobody here wrote: plain grpcio (gRPC C-core) opens zident's
DeltaAggregatedResources stream, with the protobuf messages written and read by hand (no
generated code, so nothing of zident's is shared with it).

Usage: xds_client.py ADDR ROOT_PEM TOKEN TYPE_URL

Prints one line per check:
  first BYTES NAMES NONCE   the first response: its size, how many resources, its nonce
  end OK                    after the ACK and a half-close, the stream ended with status OK
  refused CODE              a stream with a token the CA does not know
  other CODE                a method the server does not serve
  garbage SIZE CODE         SIZE bytes that are no request, as the stream's first message
"""

import queue
import sys

import grpc

SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string_field(tag, s):
    b = s.encode()
    return varint(tag << 3 | 2) + varint(len(b)) + b


def fields(buf):
    """(tag, value) of each field; varints as ints, length-delimited as bytes."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        tag, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            value, i = buf[i : i + n], i + n
            if i > len(buf):
                raise ValueError("truncated field")
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield tag, value


def read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def request(type_url, nonce=""):
    out = string_field(2, type_url)
    if nonce:
        out += string_field(6, nonce)
    return out


def response(buf):
    names, nonce, type_url = [], "", ""
    for tag, value in fields(buf):
        if tag == 2:
            resource = dict(fields(value))
            names.append(resource[3].decode())
            any_fields = dict(fields(resource[2]))
            if any_fields[1].decode() != TYPE_URL:
                raise ValueError("a resource of another type")
        elif tag == 4:
            type_url = value.decode()
        elif tag == 5:
            nonce = value.decode()
    return names, nonce, type_url


def stream(channel, method, token, requests):
    call = channel.stream_stream(
        SERVICE + method,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return call(requests, metadata=[("authorization", f"Bearer {token}")], timeout=20)


def queued(q):
    while True:
        item = q.get()
        if item is None:
            return
        yield item


ADDR, ROOT, TOKEN, TYPE_URL = sys.argv[1:5]
creds = grpc.ssl_channel_credentials(open(ROOT, "rb").read())
options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.max_receive_message_length", 64 << 20)]
with grpc.secure_channel(ADDR, creds, options=options) as channel:
    q = queue.Queue()
    q.put(request(TYPE_URL))
    responses = stream(channel, "DeltaAggregatedResources", TOKEN, queued(q))
    first = next(responses)
    names, nonce, type_url = response(first)
    if type_url != TYPE_URL:
        raise SystemExit(f"answered for {type_url!r}, asked for {TYPE_URL!r}")
    print("first", len(first), len(names), nonce, flush=True)
    q.put(request(TYPE_URL, nonce))
    q.put(None)
    for extra in responses:
        raise SystemExit(f"unexpected response after the ACK: {response(extra)}")
    print("end", responses.code().name, flush=True)

    for method, label, token in [
        ("DeltaAggregatedResources", "refused", "not-a-token"),
        ("StreamAggregatedResources", "other", TOKEN),
    ]:
        q = queue.Queue()
        q.put(request(TYPE_URL))
        q.put(None)
        try:
            for _ in stream(channel, method, token, queued(q)):
                pass
            print(label, "OK", flush=True)
        except grpc.RpcError as e:
            print(label, e.code().name, flush=True)

    for size in (1024, 100 * 1024):
        q = queue.Queue()
        q.put(bytes([0xFF]) * size)
        try:
            list(stream(channel, "DeltaAggregatedResources", TOKEN, queued(q)))
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        print("garbage", size, code, flush=True)
