"""Overcast controller: drives the clouds, keeps the state, serves REST, WebSocket and gRPC."""
