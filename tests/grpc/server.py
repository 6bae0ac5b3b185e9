"""A gRPC server for ALB's tests: `server.py PORT MODE`.

MODE `ok` answers every `/test.Echo/Call` with its port and a trailer `x-served-by: PORT`;
`unavailable` answers UNAVAILABLE at once; `exhausted` answers RESOURCE_EXHAUSTED at once.
`/test.Echo/Count` answers how many calls it got (as ASCII). The standard health service
(grpc.health.v1) reports SERVING. Messages are raw bytes (generic handlers, no protoc).
"""

import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

port, mode = int(sys.argv[1]), sys.argv[2]
calls = 0
lock = threading.Lock()


def call(request, context):
    global calls
    with lock:
        calls += 1
    if mode == "unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, f"server {port} is unavailable")
    if mode == "exhausted":
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server {port} is exhausted")
    context.set_trailing_metadata((("x-served-by", str(port)),))
    return f"server {port}: ".encode() + request


def count(request, context):
    with lock:
        return str(calls).encode()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers(
    (
        grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Call": grpc.unary_unary_rpc_method_handler(call),
                "Count": grpc.unary_unary_rpc_method_handler(count),
            },
        ),
    )
)
checker = health.HealthServicer()
checker.set("", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(checker, server)
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print(f"listening on {port}", flush=True)
server.wait_for_termination()
