"""E-mail over SMTP with the standard library (one connection per message): STARTTLS,
implicit TLS or plain, optional login. Errors become :class:`DeliveryError`, retryable
unless the server refused for good (a 5xx to the message or every recipient).

Each message is sent in a thread of the mailer's own small pool (``SMTP_WORKERS``), never
the event loop's default executor (which the rule evaluator, datapoints queries and listings
share): a slow or silent SMTP server can hold only those threads. A whole message has a
deadline (three times ``smtp_timeout``); past it the connection is shut down from the event
loop, so the thread's blocked read ends at once and its slot is free again. A slot is given
back only when its thread has ended, so no more messages are in flight than the pool has
threads."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import ssl
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import urlsplit

from controller.errors import OvercastError
from controller.notify.model import DeliveryError
from controller.secrets import SecretBox
from controller.settings import Secret, Settings
from controller.threads import named_pool

SECURITY = ("starttls", "ssl", "none")
SMTP_WORKERS = 4  # messages sent at once, each in a thread of the mailer's own pool


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str  # starttls, ssl or none
    user: str
    password: Secret
    sender: str
    timeout: float
    ca_file: str = ""  # a CA bundle trusted besides the system's (a private relay)
    problem: str = ""  # why mail cannot be sent at all (no host, a password that won't open)

    def __repr__(self) -> str:
        return f"SmtpConfig({self.host}:{self.port}, {self.security}, user={self.user!r})"

    @property
    def deadline(self) -> float:
        """Seconds one whole message may take (connect, TLS, login, sending)."""
        return 3 * self.timeout


class Cut:
    """Lets the event loop end a send that ran past its deadline: the connection is shut
    down, so the sending thread's blocked read or write fails at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._smtp: smtplib.SMTP | None = None
        self._raw: socket.socket | None = None
        self.fired = False

    def attach(self, smtp: smtplib.SMTP, raw: socket.socket) -> None:
        with self._lock:
            self._smtp, self._raw = smtp, raw
            fired = self.fired
        if fired:
            self._shut()
            raise OSError("the send was cut: its deadline passed")

    def fire(self) -> None:
        with self._lock:
            self.fired = True
        self._shut()

    def _shut(self) -> None:
        with self._lock:
            socks = [getattr(self._smtp, "sock", None), self._raw]
        for sock in socks:
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    # the plain socket's shutdown, also under TLS: the fd, not the SSL object
                    # the sending thread is using
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Smtp(smtplib.SMTP):
    """smtplib.SMTP that hands its socket to a :class:`Cut` as soon as it exists, and wraps
    it in TLS itself for implicit TLS (what SMTP_SSL does), so the handshake can be cut."""

    def __init__(self, host: str, cut: Cut, tls: ssl.SSLContext | None, timeout: float) -> None:
        self._cut = cut
        self._tls = tls
        super().__init__(timeout=timeout)  # no host: connect() is called apart
        self._host = host  # STARTTLS checks the certificate against it

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = socket.create_connection((host, port), timeout, self.source_address)
        try:
            self._cut.attach(self, raw)
            if self._tls is not None:
                return self._tls.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        return raw


def _context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


def _oneline(value: str) -> str:
    return " ".join(value.split())  # no header injection through a subject


def build(config: SmtpConfig, to: list[str], subject: str, text: str, html: str | None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = config.sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = _oneline(subject)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=config.sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg


def send_blocking(config: SmtpConfig, to: list[str], subject: str, text: str,
                  html: str | None, cut: Cut | None = None) -> str:
    """Send one message; blocks for up to ``timeout`` per step (and until ``cut`` fires).
    Returns what the server said (recipients it refused, when some were). Raises
    DeliveryError."""
    if config.problem:
        raise DeliveryError(config.problem)
    msg = build(config, to, subject, text, html)
    where = f"{config.host}:{config.port}"
    try:
        ctx = _context(config.ca_file) if config.security != "none" else None
        smtp = _Smtp(config.host, cut or Cut(), ctx if config.security == "ssl" else None,
                     config.timeout)
        try:
            smtp.connect(config.host, config.port)
            smtp.ehlo()
            if config.security == "starttls":
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if config.user:
                smtp.login(config.user, str(config.password))
            refused = smtp.send_message(msg)
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.putcmd("quit")  # the message is taken: its answer is not waited for
        finally:
            smtp.close()  # no QUIT after a failure: that would wait on a silent server again
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [c for c, _ in exc.recipients.values()]
        said = "; ".join(f"{r}: {c} {m.decode(errors='replace')[:200]}"
                         for r, (c, m) in exc.recipients.items())
        raise DeliveryError(f"{where} refused every recipient ({said})",
                            retryable=any(400 <= c < 500 for c in codes)) from None
    except smtplib.SMTPAuthenticationError as exc:
        # the operator fixes the account and restarts: keep the message for that
        raise DeliveryError(f"{where} refused the login of {config.user!r}: {exc.smtp_code} "
                            f"{_text(exc.smtp_error)}") from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}",
                            retryable=not 500 <= exc.smtp_code < 600) from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"TLS with {where} failed: {exc.reason or exc}") from None
    except (OSError, smtplib.SMTPException) as exc:
        what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DeliveryError(f"cannot send through {where}: {what}") from None
    if refused:
        return "accepted; refused: " + ", ".join(sorted(refused))
    return "accepted"


def _text(raw: bytes | str) -> str:
    return (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))[:300]


class SmtpMailer:
    """The :class:`controller.notify.service.Mailer` of the controller: at most ``workers``
    messages in flight, each in a thread of its own pool, each within the deadline."""

    def __init__(self, config: SmtpConfig, workers: int = SMTP_WORKERS) -> None:
        self.config = config
        self.workers = workers
        self.in_flight = 0  # threads sending (or about to): never more than workers
        self._pool = named_pool("smtp", workers)
        self._free: asyncio.Semaphore | None = None

    async def send(self, to: list[str], subject: str, text: str, html: str | None) -> str:
        loop = asyncio.get_running_loop()
        deadline = self.config.deadline
        end = loop.time() + deadline
        where = f"{self.config.host}:{self.config.port}"
        if self._free is None:
            self._free = asyncio.Semaphore(self.workers)
        free = self._free
        try:
            async with asyncio.timeout_at(end):
                await free.acquire()
        except TimeoutError:
            raise DeliveryError(f"{where}: {self.workers} e-mails were being sent already and "
                                f"none ended within {deadline:g} s") from None
        self.in_flight += 1

        def release() -> None:
            self.in_flight -= 1
            free.release()

        def ended(_: Future[str]) -> None:  # in the sending thread, or here if never started
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                loop.call_soon_threadsafe(release)

        cut = Cut()
        try:
            job = self._pool.submit(send_blocking, self.config, to, subject, text, html, cut)
        except BaseException:
            release()
            raise
        job.add_done_callback(ended)
        try:
            async with asyncio.timeout_at(end):
                return await asyncio.wrap_future(job)
        except TimeoutError:
            cut.fire()
            raise DeliveryError(f"{where} did not take the message within {deadline:g} s: "
                                "the connection was cut") from None
        except asyncio.CancelledError:
            cut.fire()
            raise


PASSWORD_AAD = "settings/smtp_password"  # what a sealed smtp_password is bound to


def config_from(settings: Settings, secrets: SecretBox) -> SmtpConfig:
    """The SMTP configuration from the settings: a sealed password opened, a missing server
    or a password that will not open kept as ``problem`` (every e-mail then fails with it,
    visibly, and is retried: fixing the settings and restarting sends what waits)."""
    problem = ""
    password = str(settings.smtp_password)
    if password.startswith("enc1:"):
        try:
            password = secrets.open(password, aad=PASSWORD_AAD).decode()
        except OvercastError as exc:
            problem, password = f"smtp_password cannot be opened: {exc.message}", ""
    if not settings.smtp_host:
        problem = "no SMTP server is set (the smtp_host setting): e-mail cannot be sent"
    host = urlsplit(settings.public_url).hostname or "localhost"
    return SmtpConfig(host=settings.smtp_host, port=settings.smtp_port,
                      security=settings.smtp_security, user=settings.smtp_user,
                      password=Secret(password), sender=settings.smtp_from or f"overcast@{host}",
                      timeout=float(settings.smtp_timeout), ca_file=settings.smtp_ca_file,
                      problem=problem)
