"""Overcast: the version and the generated protocol modules (from the .proto files beside them)."""

__version__ = "0.1.0"
