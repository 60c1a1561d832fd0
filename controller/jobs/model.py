"""The job document: one background action, its progress and its outcome.

    job/<org>/<id>   {id, action, target: {kind, id}, status, progress: [...], result, error,
                      created, started, finished, created_by}

``status`` goes queued -> running -> succeeded | failed. Jobs left running by a controller
that stopped are failed on the next start ("interrupted")."""

from __future__ import annotations

from controller.store.docs import DocKind

JOB = DocKind("job")
STATUSES = ("queued", "running", "succeeded", "failed")
MAX_PROGRESS = 200  # progress lines kept per job; older ones are dropped (counted)


def key(org: str, job_id: str) -> str:
    return f"job/{org}/{job_id}"
