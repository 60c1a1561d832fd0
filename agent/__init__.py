"""The Overcast agent: runs on a managed host, enrols with a join token, then keeps one
mutual-TLS gRPC stream to the controller for inventory, metrics and commands."""

AGENT_VERSION = "0.1.0"
# the agent protocol (see proto/overcast/agent/v1/agent.proto for the dated history); here,
# not in agent.enroll, so that the running agent does not load enrolment's HTTP client
PROTOCOL_VERSION = 1
