"""Monitoring of machines: enabling it on an agentless machine (the agent installed over SSH
through the install script users run by hand), disabling it (the agent uninstalled and
revoked), and custom metric sources (scripts the agents run, whose output becomes samples)."""
