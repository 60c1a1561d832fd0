"""The ``overcast`` command. Imports nothing beyond the standard library and the agent's
dependencies at start, so it runs in an agent-only install; controller commands import the
controller's extra when called."""
