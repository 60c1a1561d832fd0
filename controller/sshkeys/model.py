"""The key document.

    key/<org>/<id>   {id, name, type: "ssh", algorithm, bits, public, fingerprint, default,
                      certificate, tags, created, created_by, owned_by, _private (sealed)}

The private half is sealed with the controller's secret key, bound to the document's key;
views never carry it (``GET /api/v2/keys/{key}?private=true`` is the one, audited, way)."""

from __future__ import annotations

from controller.store.docs import DocKind

KEY = DocKind("key")
ALGORITHMS = {"ed25519": "ssh-ed25519", "rsa": "ssh-rsa"}
RSA_BITS = (2048, 3072, 4096, 8192)


def key(org: str, key_id: str) -> str:
    return f"key/{org}/{key_id}"
