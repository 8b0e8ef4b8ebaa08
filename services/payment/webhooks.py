"""The card provider's chargeback webhook: signed notices become payment.chargeback-received.

The provider signs `"{t}.{raw body}"` with HMAC-SHA256 and the shared secret, and sends
`Signature: t=<unix seconds>,v1=<hex>` (Stripe's scheme; while it rotates its secret it
sends one v1 per secret). A notice is accepted only when a v1 matches and `t` is within
TOLERANCE_S of our clock, either way: that bounds how long a captured notice can be
replayed, and inside the window its chargeback_id makes a replay a duplicate.

The route needs no bearer token: the signature is its authentication.
"""

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from services.payment.domain import NoticeOutcome
from services.payment.service import PaymentService
from services.payment.settings import PaymentSettings
from shared.contracts import ChargebackReceived
from shared.http import OpenRoute

log = logging.getLogger(__name__)

PATH = "/v1/webhooks/chargebacks"
SIGNATURE_HEADER = "Signature"
TOLERANCE_S = 300
MAX_BODY_BYTES = 64 * 1024  # a notice is a few hundred bytes; read no more than this

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class SignatureError(ValueError):
    """Why a notice's signature is refused; `code` is the `error` of the 400 answer."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[str, ...]


def sign(secret: bytes | str, body: bytes, timestamp: int) -> str:
    """The v1 signature of `body` sent at `timestamp`: hex HMAC-SHA256 of `"{t}.{body}"`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes | str, body: bytes, timestamp: int) -> str:
    """The whole `Signature` header value the provider would send (for tests and operators)."""
    return f"t={timestamp},v1={sign(secret, body, timestamp)}"


def parse_signature_header(value: str) -> SignatureHeader:
    """`t=<unix seconds>,v1=<hex>[,v1=<hex>…]`; other schemes are ignored, as Stripe does."""
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in value.split(","):
        scheme, sep, content = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed_signature", f"{item.strip()!r} is not scheme=value")
        if scheme == "t":
            timestamps.append(content)
        elif scheme == "v1":
            signatures.append(content.lower())
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise SignatureError("malformed_signature", "needs exactly one t=<unix seconds>")
    if not signatures or not all(_HEX_SHA256.fullmatch(s) for s in signatures):
        raise SignatureError("malformed_signature", "needs v1=<64 hex digits>, one or more")
    return SignatureHeader(int(timestamps[0]), tuple(signatures))


def verify(
    secret: bytes, header: str | None, body: bytes, *, now: float, tolerance_s: int = TOLERANCE_S
) -> None:
    """Raise SignatureError unless one v1 of `header` signs `body` and its time is within
    `tolerance_s` of `now` (past or future)."""
    if not header:
        raise SignatureError("missing_signature", f"no {SIGNATURE_HEADER} header")
    parsed = parse_signature_header(header)
    expected = sign(secret, body, parsed.timestamp)
    # Constant time, so the answer's timing tells nothing about how close a guess was.
    if not any(hmac.compare_digest(expected, candidate) for candidate in parsed.signatures):
        raise SignatureError("bad_signature", "no v1 signature matches the body")
    if abs(now - parsed.timestamp) > tolerance_s:
        raise SignatureError(
            "stale_signature", f"the signature's time is more than {tolerance_s}s from ours"
        )


_REFUSALS: dict[NoticeOutcome, tuple[int, str]] = {
    "idempotency_conflict": (409, "this chargeback_id was used before for another payment"),
    "unknown_payment": (422, "no payment with this payment_id was completed here"),
    "user_mismatch": (422, "the payment belongs to another user"),
}


def routes(
    service: PaymentService, settings: PaymentSettings, registry: CollectorRegistry
) -> Sequence[BaseRoute]:
    """`POST /v1/webhooks/chargebacks`; 503 when no secret is configured."""
    secret = settings.chargeback_webhook_key()  # at start-up: an unreadable file fails now
    notices = Counter(
        "coinstream_chargeback_notices",
        "Chargeback notices the webhook received, by outcome",
        ["outcome"],
        registry=registry,
    )

    def refuse(http_status: int, code: str, detail: str) -> Response:
        notices.labels(code).inc()
        return JSONResponse({"error": code, "detail": detail}, status_code=http_status)

    async def chargebacks(request: Request) -> Response:
        if secret is None:
            return refuse(503, "webhook_disabled", "no chargeback webhook secret is configured")
        body = await _read_at_most(request, MAX_BODY_BYTES)
        if body is None:
            return refuse(413, "too_large", f"a notice has at most {MAX_BODY_BYTES} bytes")
        try:
            verify(secret, request.headers.get(SIGNATURE_HEADER), body, now=time.time())
            notice = ChargebackReceived.model_validate_json(body)
        except SignatureError as error:
            log.warning("chargeback notice refused: %s (%s)", error.code, error)
            return refuse(400, error.code, str(error))
        except ValidationError as error:
            return refuse(400, "invalid_notice", _summary(error))
        outcome = await service.accept_chargeback_notice(notice)
        if outcome in _REFUSALS:
            http_status, detail = _REFUSALS[outcome]
            return refuse(http_status, outcome, detail)
        notices.labels(outcome).inc()
        return JSONResponse({"status": outcome, "chargeback_id": notice.chargeback_id})

    return [OpenRoute(PATH, chargebacks, methods=["POST"])]  # the signature authenticates


async def _read_at_most(request: Request, limit: int) -> bytes | None:
    """The raw body (the signature is over these exact bytes), or None past `limit`."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _summary(error: ValidationError) -> str:
    problems = error.errors(include_url=False, include_input=False)
    return "; ".join(f"{'.'.join(map(str, p['loc'])) or 'body'}: {p['msg']}" for p in problems)
