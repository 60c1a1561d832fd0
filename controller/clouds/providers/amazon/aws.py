"""What the EC2 and Route53 drivers share: SigV4 signing moto and AWS both verify, namespace-
tolerant XML, and AWS error bodies read into libcloud errors that ``libcloud_errors`` maps.

Imports libcloud: load it only through the adapter."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

from libcloud.common.aws import AWSRequestSignerAlgorithmV4
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError

from controller.clouds.providers.errors import blame
from controller.errors import Invalid

# AWS error codes that mean "these credentials are not accepted" (wrong key, wrong secret,
# expired or disabled key, account not subscribed to the service or the region)
AUTH_CODES = frozenset({
    "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "IncompleteSignature",
    "MissingAuthenticationToken", "OptInRequired", "InvalidAccessKeyId", "ExpiredToken",
    "UnrecognizedClientException", "AccessDeniedException", "AccessDenied", "UnauthorizedOperation",
})
THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException",
                            "PriorRequestNotComplete", "ServiceUnavailable", "Unavailable"})
# the words a user reads for the commonest refusals (AWS's own are terse)
AUTH_WORDS = {
    "AuthFailure": "the API key or the API secret was refused",
    "InvalidClientTokenId": "the API key is not known",
    "InvalidAccessKeyId": "the API key is not known",
    "SignatureDoesNotMatch": "the API secret does not match the API key",
    "UnauthorizedOperation": "the API key is not allowed to do this",
    "AccessDenied": "the API key is not allowed to do this",
    "AccessDeniedException": "the API key is not allowed to do this",
}


# the credential field each refusal is about, where AWS's code makes it clear: an unknown,
# expired or under-privileged key is the key's; a signature that does not match, the secret's.
# EC2's AuthFailure says neither (AWS answers it to a wrong key and to a wrong secret alike):
# the adapter asks Route53, which tells them apart (``AmazonAdapter.which_refused``).
AUTH_FIELDS = {
    "InvalidClientTokenId": "apikey", "InvalidAccessKeyId": "apikey", "ExpiredToken": "apikey",
    "UnrecognizedClientException": "apikey", "UnauthorizedOperation": "apikey",
    "AccessDenied": "apikey", "AccessDeniedException": "apikey", "OptInRequired": "apikey",
    "SignatureDoesNotMatch": "apisecret", "IncompleteSignature": "apisecret",
}


class AWSError(BaseHTTPError):
    """An AWS error answer: ``code`` is the HTTP status libcloud_errors maps (404 for AWS's
    ``*NotFound`` codes, sent as 400), ``aws_code`` the AWS error code."""

    def __init__(self, status: int, aws_code: str, message: str) -> None:
        super().__init__(status, message)
        self.aws_code = aws_code


def local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def renamespace(root: Any, namespace: str) -> Any:
    """Put every element of ``root`` in ``namespace``, whatever namespace (or none) the server
    used: moto >= 5.1 drops the trailing "/" of EC2's namespace, and libcloud's parsers find
    nothing at all in a namespace that differs by one character."""
    if root is None or not hasattr(root, "iter"):
        return root
    for el in root.iter():
        if isinstance(el.tag, str):
            el.tag = f"{{{namespace}}}{local(el.tag)}"
    return root


def error_of(root: Any) -> tuple[str, str]:
    """(code, message) of the first ``Error`` in an AWS error body, any namespace."""
    if root is None or not hasattr(root, "iter"):
        return "", ""
    for el in root.iter():
        if local(el.tag) == "Error":
            code = message = ""
            for child in el:
                if local(child.tag) == "Code":
                    code = (child.text or "").strip()
                elif local(child.tag) == "Message":
                    message = (child.text or "").strip()
            return code, message
    return "", ""


def raise_error(status: int, body: str, reason: str) -> str:
    """Raise the libcloud error that says what AWS refused; libcloud's own EC2 parser fails on
    errors with a ``Type`` element (moto's and IAM's) and on namespaced error bodies."""
    try:
        code, message = error_of(ET.XML(body.encode("utf-8") if isinstance(body, str) else body))
    except Exception:  # not XML: an HTML page from a proxy, an empty 5xx
        code, message = "", ""
    text = f"{code}: {message}" if code else (reason or f"HTTP {status}")
    if code in AUTH_CODES or (not code and status in (401, 403)):
        words = AUTH_WORDS.get(code, "the credentials were refused")
        raise blame(InvalidCredsError(f"{words} ({text})"), AUTH_FIELDS.get(code, ""), code)
    if code in THROTTLE_CODES:
        raise AWSError(429 if code != "Unavailable" else 503, code, text)
    if code.endswith("NotFound") or code.startswith("NoSuch"):
        raise AWSError(404, code, text)
    raise AWSError(status, code, text)


class SigV4(AWSRequestSignerAlgorithmV4):
    """libcloud's SigV4 signing only ``host``, ``content-type`` and ``x-amz-*``: libcloud signs
    every header, User-Agent included, which verifiers built on botocore (moto) drop before
    checking, so a right key was refused. AWS requires no more than these."""

    @staticmethod
    def _signed(headers: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in headers.items()
                if k.lower() in ("host", "content-type") or k.lower().startswith("x-amz-")}

    def _get_signed_headers(self, headers: dict[str, Any]) -> str:
        result: str = super()._get_signed_headers(self._signed(headers))
        return result

    def _get_canonical_headers(self, headers: dict[str, Any]) -> str:
        result: str = super()._get_canonical_headers(self._signed(headers))
        return result


class RestSigV4(SigV4):
    """For REST APIs (Route53): no ``Version`` query parameter, the path names the version."""

    def get_request_params(self, params: dict[str, Any], method: str = "GET",
                           path: str = "/") -> dict[str, Any]:
        return params


def parse_endpoint(value: str) -> tuple[str, int, bool]:
    """``http(s)://host[:port]`` -> (host, port, secure); :class:`Invalid` otherwise."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("endpoint must be a URL like https://ec2.example.com or "
                      "http://127.0.0.1:5000", field="endpoint")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise Invalid("endpoint must be a scheme, a host and a port only", field="endpoint")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Invalid("endpoint has an invalid port", field="endpoint") from None
    return parts.hostname, port, parts.scheme == "https"
