"""A gRPC client for ALB's tests: `client.py TARGET N` makes N unary calls to
`/test.Echo/Call` over one channel (one HTTP/2 connection) and prints, as JSON, the count of
each status code and the trailing metadata and message of the first OK and first failed call.
`client.py TARGET count` prints the server's call count.
"""

import json
import sys

import grpc

target, what = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(target)
if what == "count":
    count = channel.unary_unary("/test.Echo/Count")
    print(int(count(b"", timeout=10)))
    sys.exit(0)
call = channel.unary_unary("/test.Echo/Call")
codes, first_ok, first_error = {}, None, None
for i in range(int(what)):
    try:
        response, c = call.with_call(b"hello", timeout=10)
        code = "OK"
        if first_ok is None:
            first_ok = {"message": response.decode(), "trailers": dict(c.trailing_metadata())}
    except grpc.RpcError as e:
        code = e.code().name
        if first_error is None:
            first_error = {
                "code": code,
                "details": e.details(),
                "trailers": dict(e.trailing_metadata() or ()),
            }
    codes[code] = codes.get(code, 0) + 1
print(json.dumps({"codes": codes, "first_ok": first_ok, "first_error": first_error}))
