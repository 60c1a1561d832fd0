"""E-mail over SMTP with the standard library (one connection per message, in a thread):
STARTTLS, implicit TLS or plain, optional login. Errors become :class:`DeliveryError`,
retryable unless the server refused for good (a 5xx to the message or every recipient)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import urlsplit

from controller.errors import OvercastError
from controller.notify.model import DeliveryError
from controller.secrets import SecretBox
from controller.settings import Secret, Settings

SECURITY = ("starttls", "ssl", "none")


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
                  html: str | None) -> str:
    """Send one message; blocks for up to ``timeout`` per step. Returns what the server
    said (recipients it refused, when some were). Raises DeliveryError."""
    if config.problem:
        raise DeliveryError(config.problem)
    msg = build(config, to, subject, text, html)
    where = f"{config.host}:{config.port}"
    try:
        ctx = _context(config.ca_file) if config.security != "none" else None
        if config.security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout,
                                                  context=ctx)
        else:
            smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        with smtp:
            smtp.ehlo()
            if config.security == "starttls":
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if config.user:
                smtp.login(config.user, str(config.password))
            refused = smtp.send_message(msg)
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
    """The :class:`controller.notify.service.Mailer` of the controller."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, to: list[str], subject: str, text: str, html: str | None) -> str:
        return await asyncio.to_thread(send_blocking, self.config, to, subject, text, html)


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
