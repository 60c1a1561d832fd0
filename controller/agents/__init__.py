"""Agents: join tokens, enrolment through the controller's CA, the mTLS stream, inventory and
metrics."""
