"""Helpers shared by the tests: a real controller process and small HTTP clients."""
