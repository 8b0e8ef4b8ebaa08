"""The chargeback webhook's signature: Stripe-style `t=…,v1=…` over `"{t}.{raw body}"`."""

import hashlib
import hmac
from pathlib import Path

import pytest

from services.payment.settings import PaymentSettings
from services.payment.webhooks import (
    TOLERANCE_S,
    SignatureError,
    parse_signature_header,
    sign,
    signature_header,
    verify,
)

SECRET = b"whsec_test_secret"
BODY = (
    b'{"chargeback_id":"cb_1","payment_id":"pay_1","user_id":"u1",'
    b'"occurred_at":"2026-11-22T13:00:00Z"}'
)
NOW = 1_790_000_000


def refusal(header: str | None, body: bytes = BODY, now: float = NOW) -> str:
    with pytest.raises(SignatureError) as raised:
        verify(SECRET, header, body, now=now)
    return raised.value.code


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, NOW) == expected
    assert sign(SECRET.decode(), BODY, NOW) == expected
    assert signature_header(SECRET, BODY, NOW) == f"t={NOW},v1={expected}"


def test_a_valid_signature_passes_within_the_tolerance_either_way() -> None:
    header = signature_header(SECRET, BODY, NOW)
    for now in (NOW, NOW + TOLERANCE_S, NOW - TOLERANCE_S):
        verify(SECRET, header, BODY, now=now)


def test_any_of_several_v1_signatures_may_match_as_during_a_secret_rotation() -> None:
    old = sign(b"the old secret", BODY, NOW)
    new = sign(SECRET, BODY, NOW)
    verify(SECRET, f"t={NOW},v1={old},v1={new}", BODY, now=NOW)
    verify(SECRET, f"t={NOW}, v1={new.upper()} ,v1={old}", BODY, now=NOW)  # spaces, case
    assert parse_signature_header(f"t={NOW},v1={old},v1={new}").signatures == (old, new)


def test_unknown_schemes_are_ignored() -> None:
    header = f"v0={'0' * 64},t={NOW},v2=whatever,v1={sign(SECRET, BODY, NOW)}"
    verify(SECRET, header, BODY, now=NOW)


def test_a_missing_header_is_refused() -> None:
    assert refusal(None) == "missing_signature"
    assert refusal("") == "missing_signature"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        f"v1={'a' * 64}",  # no timestamp
        f"t={NOW}",  # no signature
        f"t={NOW},t={NOW},v1={'a' * 64}",  # two timestamps
        f"t=-{NOW},v1={'a' * 64}",
        f"t={NOW}.5,v1={'a' * 64}",
        f"t=\uff11\uff12,v1={'a' * 64}",  # fullwidth digits: str.isdigit's, not ours
        f"t={NOW},v1=not-hex",
        f"t={NOW},v1={'a' * 63}",
        f"t={NOW},v1={'a' * 64},,",
    ],
)
def test_a_malformed_header_is_refused(header: str) -> None:
    assert refusal(header) == "malformed_signature"


def test_a_signature_over_another_body_time_or_secret_is_refused() -> None:
    assert refusal(signature_header(SECRET, BODY + b" ", NOW)) == "bad_signature"
    assert refusal(f"t={NOW + 1},v1={sign(SECRET, BODY, NOW)}") == "bad_signature"
    assert refusal(signature_header(b"another secret", BODY, NOW)) == "bad_signature"
    assert refusal(signature_header(SECRET, BODY, NOW), body=BODY.replace(b"cb_1", b"cb_2")) == (
        "bad_signature"
    )


def test_a_timestamp_beyond_the_tolerance_is_refused_in_the_past_and_in_the_future() -> None:
    header = signature_header(SECRET, BODY, NOW)
    assert refusal(header, now=NOW + TOLERANCE_S + 1) == "stale_signature"
    assert refusal(header, now=NOW - TOLERANCE_S - 1) == "stale_signature"
    assert TOLERANCE_S == 300


def test_the_error_names_no_secret() -> None:
    with pytest.raises(SignatureError) as raised:
        verify(SECRET, signature_header(b"x", BODY, NOW), BODY, now=NOW)
    assert SECRET.decode() not in str(raised.value)
    assert sign(SECRET, BODY, NOW) not in str(raised.value)


def test_the_secret_comes_from_the_setting_or_its_file_and_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHARGEBACK_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("CHARGEBACK_WEBHOOK_SECRET_FILE", raising=False)
    assert PaymentSettings().chargeback_webhook_key() is None  # the webhook is off

    monkeypatch.setenv("CHARGEBACK_WEBHOOK_SECRET", "s3cret-from-env")
    settings = PaymentSettings()
    assert settings.chargeback_webhook_key() == b"s3cret-from-env"
    assert "s3cret-from-env" not in repr(settings) + str(settings.model_dump())

    monkeypatch.delenv("CHARGEBACK_WEBHOOK_SECRET")
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text("s3cret-from-file\n")
    monkeypatch.setenv("CHARGEBACK_WEBHOOK_SECRET_FILE", str(secret_file))
    assert PaymentSettings().chargeback_webhook_key() == b"s3cret-from-file"

    secret_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        PaymentSettings().chargeback_webhook_key()
    monkeypatch.setenv("CHARGEBACK_WEBHOOK_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read CHARGEBACK_WEBHOOK_SECRET_FILE"):
        PaymentSettings().chargeback_webhook_key()
