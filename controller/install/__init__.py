"""Installing agents on servers: the install script, the agent's package built from this
controller's own code, and the dependency wheels served to hosts without the package index."""
