"""The script documents, their content snapshots, and the limits on both.

    script/<org>/<id>        {id, org, name, description, exec_type, location_type, source,
                              entrypoint, ref, commit, sha256, size, tags, created, created_by,
                              owned_by, fetched, _created_at, _url (sealed; only when the
                              source URL carries credentials)}
    scriptdata/<org>/<id>    the content as fetched: the script's bytes (``entrypoint`` "")
                             or a .tar.gz archive (``entrypoint`` names the file to run in it)

The document and its content are written and deleted together, in one batch; ``sha256`` is
the content's digest, checked on every read of the content."""

from __future__ import annotations

from controller.errors import OvercastError
from controller.store.docs import DocKind

SCRIPT = DocKind("script")
EXEC_TYPES = ("executable", "ansible")
# github is Mist's name for a git repository; git is ours (any http(s) git server)
LOCATION_TYPES = ("inline", "url", "github", "git")
GIT_TYPES = ("github", "git")

MAX_INLINE = 512 * 1024             # bytes of an inline script (UTF-8)
MAX_ARCHIVE = 10 * 1024 * 1024      # bytes downloaded, or of a repository packed as .tar.gz
MAX_UNPACKED = 100 * 1024 * 1024    # bytes of all files in an archive or a cloned tree
MAX_MEMBERS = 10_000                # files, directories and links in an archive
MAX_URL = 2000
# seconds for one download (redirects included) or one clone: the request waits for it, and
# the CLI waits 60 s for an answer
DOWNLOAD_TIMEOUT = 45.0
GIT_TIMEOUT = 45.0
MAX_REDIRECTS = 5


class ScriptCorrupt(OvercastError):
    """The stored script does not match its checksum: it is not run or served."""

    code = "script_corrupt"


def script_key(org: str, script_id: str) -> str:
    return f"script/{org}/{script_id}"


def content_key(org: str, script_id: str) -> str:
    return f"scriptdata/{org}/{script_id}"
