"""The Overcast agent: runs on a managed host, enrols with a join token, then keeps one
mutual-TLS gRPC stream to the controller for inventory, metrics and commands."""

AGENT_VERSION = "0.1.0"
