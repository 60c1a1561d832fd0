"""One live shell relayed between its channel (agent or SSH) and its client (a browser, the
CLI): output goes to the client and the recording, keystrokes and resizes to the channel;
a watchdog ends the shell when it is idle (no keystroke and no output) or open too long.
The first of these to end ends the others."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from controller.exec.model import ShellChannel
from controller.shells.model import (
    CLIENT,
    ERROR,
    EXIT,
    IDLE,
    MAX_DURATION,
    SHUTDOWN,
    Gone,
    Keys,
    Resize,
    ShellClient,
)
from controller.shells.recording import Recorder
from controller.timeutil import iso

log = logging.getLogger(__name__)


def _span(seconds: float) -> str:
    s = int(seconds)
    if s % 3600 == 0 and s >= 3600:
        return f"{s // 3600} h"
    if s % 60 == 0 and s >= 60:
        return f"{s // 60} min"
    return f"{s} s"


class Live:
    """The state of one open shell, shared by the relay, the service and views of it."""

    def __init__(self, doc: dict[str, Any], idle_timeout: float, max_duration: float) -> None:
        self.doc = doc
        self.idle_timeout = idle_timeout
        self.max_duration = max_duration
        self.started = time.monotonic()
        self.started_at = time.time()
        self.last = self.started
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason = ""
        self.error = ""
        self.exit_code: int | None = None
        self.stop_reason = ""
        self._stop = asyncio.Event()
        self.done = asyncio.Event()  # set once the end is stored and audited

    def touch(self) -> None:
        self.last = time.monotonic()

    def stop(self, reason: str) -> None:
        """End the shell from outside (the controller stops)."""
        self.stop_reason = reason
        self._stop.set()

    def end(self, reason: str, error: str = "", exit_code: int | None = None) -> None:
        if not self.reason:  # the first reason is the one
            self.reason, self.error, self.exit_code = reason, error, exit_code

    def snapshot(self) -> dict[str, Any]:
        """The session document with the counts so far (for views of a live shell)."""
        return dict(self.doc, bytes_in=self.bytes_in, bytes_out=self.bytes_out,
                    duration=round(time.time() - self.started_at, 3))

    def conclude(self) -> None:
        """Write how the shell ended into the document."""
        now = time.time()
        reason = self.reason or ERROR
        error = self.error or ("" if self.reason else "the shell ended for an unknown reason")
        self.doc.update(ended=iso(now), exit_code=self.exit_code, reason=reason, error=error,
                        bytes_in=self.bytes_in, bytes_out=self.bytes_out,
                        duration=round(now - self.started_at, 3) if self.doc.get("started") else None,
                        state="failed" if reason == ERROR else "closed")


async def relay(live: Live, channel: ShellChannel, client: ShellClient,
                recorder: Recorder | None) -> None:
    """Relay until the first end; close the channel and the recording; tell the client how
    it ended. Records the end in ``live`` (never raises for the shell's or client's end)."""
    doc = live.doc
    if recorder is not None:
        try:
            await recorder.start()
            doc["recorded"] = True
        except OSError as exc:
            log.warning("shell %s is not recorded: %s", doc["id"], exc.strerror or exc)
            doc["recording_error"] = f"could not create the recording: {exc.strerror or exc}"
            recorder = None

    async def pump_out() -> str:
        while True:
            data = await channel.read()
            if data is None:
                return EXIT
            live.touch()
            live.bytes_out += len(data)
            if recorder is not None:
                recorder.output(data)
            try:
                await client.send_output(data)
            except ConnectionError:
                return CLIENT

    async def pump_in() -> str:
        while True:
            msg = await client.receive()
            if isinstance(msg, Gone):
                return msg.reason or CLIENT
            live.touch()
            if isinstance(msg, Keys):
                live.bytes_in += len(msg.data)
                channel.write(msg.data)
            elif isinstance(msg, Resize):
                channel.resize(msg.cols, msg.rows)
                if recorder is not None:
                    recorder.resize(msg.cols, msg.rows)

    async def watchdog() -> str:
        tick = max(0.05, min(1.0, live.idle_timeout / 4, live.max_duration / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - live.started >= live.max_duration:
                return MAX_DURATION
            if now - live.last >= live.idle_timeout:
                return IDLE

    async def stopped() -> str:
        await live._stop.wait()
        return live.stop_reason or SHUTDOWN

    await client.send_control({"type": "ready", "id": doc["id"], "machine": doc["machine"],
                               "machine_name": doc["machine_name"], "via": doc["via"]})
    tasks = [asyncio.ensure_future(c) for c in (pump_out(), pump_in(), watchdog(), stopped())]
    reason, failure = "", ""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        results = []
        for task in done:
            err = task.exception()
            if err is not None:
                log.error("shell %s: the relay failed", doc["id"], exc_info=err)
                failure = f"the relay failed: {err.__class__.__name__}"
            else:
                results.append(task.result())
        # the shell's own end wins over anything that happened at the same moment
        reason = EXIT if EXIT in results else (results[0] if results else ERROR)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await channel.close()
        finally:
            if recorder is not None:
                stats = await recorder.close()
                doc.update(recording_bytes=stats.bytes, recording_truncated=stats.truncated)
                if stats.error:
                    doc["recording_error"] = stats.error
    await _tell(live, channel, client, reason, failure)


async def _tell(live: Live, channel: ShellChannel, client: ShellClient, reason: str,
                failure: str) -> None:
    """Record the end in ``live`` and send the client its last message."""
    if reason == EXIT:
        code = channel.exit_code
        if code is not None and not channel.error:
            live.end(EXIT, exit_code=code)
            await client.send_control({"type": "exit", "code": code})
            return
        why = channel.error or "the shell ended without an exit status"
        live.end(ERROR, why, code)
        await client.send_control({"type": "error", "reason": ERROR, "message": why})
        return
    messages = {
        IDLE: f"closed: no input or output for {_span(live.idle_timeout)} "
              "(setting shell_idle_timeout)",
        MAX_DURATION: f"closed: the shell was open for {_span(live.max_duration)}, the "
                      "longest allowed (setting shell_max_duration)",
        SHUTDOWN: "closed: the controller is shutting down",
        ERROR: failure or "the relay failed",
    }
    if reason == CLIENT:
        live.end(CLIENT)
        return
    message = messages.get(reason, f"closed ({reason})")
    live.end(reason, message if reason == ERROR else "")
    await client.send_control({"type": "error", "reason": reason, "message": message})
