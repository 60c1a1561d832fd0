"""The gRPC management API (grpc.aio) for programs: the same domain code as REST."""
