"""Bearer tokens: what a service accepts, and what each token may read (shared/auth.py,
shared/http.py). The real services behind them: tests/integration/test_http_auth.py."""

import base64
import hashlib
import hmac
import json
from datetime import timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from shared import auth
from shared.auth import AuthConfigError, AuthSettings, TokenError, TokenVerifier
from shared.cli import app as cli
from shared.http import OpenRoute, authorize, bearer_auth, health_routes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> auth.KeyPair:
    folder = tmp_path_factory.mktemp("jwt") / "secrets"
    return auth.generate_key_pair(folder / "jwt-private.pem", folder / "jwt-public.pem")


@pytest.fixture(scope="module")
def verifier(keys: auth.KeyPair) -> TokenVerifier:
    return TokenVerifier.from_settings(AuthSettings(public_key_file=keys.public))


def test_a_valid_token_names_its_user(keys: auth.KeyPair, verifier: TokenVerifier) -> None:
    found = verifier.verify(auth.mint_token(keys.private, "ada"))

    assert (found.subject, found.operator) == ("ada", False)
    assert found.may_read("ada") and not found.may_read("bob")


def test_the_operator_scope_reads_anyone(keys: auth.KeyPair, verifier: TokenVerifier) -> None:
    found = verifier.verify(auth.mint_token(keys.private, "ops", operator=True))

    assert found.operator and found.may_read("bob")


def test_an_expired_token_is_refused(keys: auth.KeyPair, verifier: TokenVerifier) -> None:
    expired = auth.mint_token(keys.private, "ada", ttl=timedelta(minutes=-5))

    with pytest.raises(TokenError, match="expired"):
        verifier.verify(expired)


def test_a_token_signed_with_another_key_is_refused(
    tmp_path: Path, verifier: TokenVerifier
) -> None:
    other = auth.generate_key_pair(tmp_path / "private.pem", tmp_path / "public.pem")

    with pytest.raises(TokenError, match="invalid token"):
        verifier.verify(auth.mint_token(other.private, "ada", operator=True))


def test_an_unsigned_token_alg_none_is_refused(verifier: TokenVerifier) -> None:
    unsigned = jwt.encode({"sub": "ada", "exp": 4102444800, "scope": "operator"}, "", "none")

    with pytest.raises(TokenError):
        verifier.verify(unsigned)


def test_an_hmac_token_keyed_with_the_public_key_is_refused(
    keys: auth.KeyPair, verifier: TokenVerifier
) -> None:
    """The classic confusion attack: HS256 with the (public) PEM as the secret."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"sub": "ada", "exp": 4102444800, "scope": "operator"}).encode())
    mac = hmac.new(keys.public.read_bytes(), f"{header}.{claims}".encode(), hashlib.sha256)
    forged = f"{header}.{claims}.{_b64(mac.digest())}"

    with pytest.raises(TokenError):
        verifier.verify(forged)


def test_a_token_without_expiry_or_subject_is_refused(
    keys: auth.KeyPair, verifier: TokenVerifier
) -> None:
    key = auth.load_private_key(keys.private)
    for claims in ({"sub": "ada"}, {"exp": 4102444800}, {"sub": "", "exp": 4102444800}):
        with pytest.raises(TokenError):
            verifier.verify(jwt.encode(claims, key, algorithm="EdDSA"))


def test_issuer_and_audience_must_match_when_configured(keys: auth.KeyPair) -> None:
    strict = TokenVerifier.from_settings(
        AuthSettings(public_key_file=keys.public, issuer="https://id.example", audience="cs")
    )
    good = auth.mint_token(keys.private, "ada", issuer="https://id.example", audience="cs")

    assert strict.verify(good).subject == "ada"
    for issuer, audience in (("https://id.example", "other"), ("https://evil", "cs"), (None, None)):
        token = auth.mint_token(keys.private, "ada", issuer=issuer, audience=audience)
        with pytest.raises(TokenError):
            strict.verify(token)


def test_es256_and_rsa_keys_verify_with_their_own_algorithm_only(tmp_path: Path) -> None:
    for private in (ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)):
        pem = tmp_path / "key.pem"
        pem.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public = tmp_path / "public.pem"
        public.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        verifier = TokenVerifier.from_settings(AuthSettings(public_key_file=public))
        assert verifier.verify(auth.mint_token(pem, "ada")).subject == "ada"


def test_a_jwks_verifies_by_key_id_and_never_with_a_symmetric_key(
    tmp_path: Path, keys: auth.KeyPair
) -> None:
    private = auth.load_private_key(keys.private)
    assert isinstance(private, Ed25519PrivateKey)  # what `coinstream keys` makes
    public = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    secret = {"kty": "oct", "k": _b64(b"a shared secret of 32 bytes....."), "alg": "HS256"}
    jwks = tmp_path / "jwks.json"  # PyJWKClient reads it with urllib, as from https://
    jwks.write_text(
        json.dumps({"keys": [public | {"kid": "k1", "alg": "EdDSA"}, secret | {"kid": "k2"}]})
    )
    verifier = TokenVerifier.from_settings(AuthSettings(jwks_url=jwks.as_uri()))
    claims = {"sub": "ada", "exp": 4102444800}

    good = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": "k1"})
    forged = jwt.encode(claims, b"a shared secret of 32 bytes.....", "HS256", headers={"kid": "k2"})

    assert verifier.verify(good).subject == "ada"
    with pytest.raises(TokenError):
        verifier.verify(forged)
    with pytest.raises(TokenError):
        verifier.verify(jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": "k9"}))


def test_a_service_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="JWT_PUBLIC_KEY_FILE"):
        TokenVerifier.from_settings(AuthSettings())
    with pytest.raises(AuthConfigError, match="cannot read"):
        TokenVerifier.from_settings(AuthSettings(public_key_file=tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(AuthConfigError, match="not a PEM public key"):
        TokenVerifier.from_settings(AuthSettings(public_key_file=tmp_path / "junk.pem"))


def test_the_settings_come_from_jwt_variables(
    monkeypatch: pytest.MonkeyPatch, keys: auth.KeyPair
) -> None:
    monkeypatch.setenv("JWT_PUBLIC_KEY_FILE", str(keys.public))
    monkeypatch.setenv("JWT_AUDIENCE", "coinstream")

    settings = AuthSettings()

    assert (settings.public_key_file, settings.audience) == (keys.public, "coinstream")


def test_the_private_key_is_its_owners_only(keys: auth.KeyPair) -> None:
    assert keys.private.stat().st_mode & 0o777 == 0o600
    assert keys.public.stat().st_mode & 0o777 == 0o644
    before = keys.private.read_bytes()
    assert auth.ensure_key_pair(keys.private, keys.public) == keys  # made once
    assert keys.private.read_bytes() == before


# ─── The middleware in front of a service's routes ─────────────────────────────────


def app_with(verifier: TokenVerifier) -> Starlette:
    async def balance(request: Request) -> Response:
        authorize(request, request.path_params["user_id"])
        return JSONResponse({"user_id": request.path_params["user_id"]})

    async def catalog(_: Request) -> Response:
        return JSONResponse({"gifts": []})

    async def ready() -> bool:
        return True

    routes = [
        Route("/v1/users/{user_id}/balance", balance),
        OpenRoute("/v1/gifts", catalog),
        *health_routes(CollectorRegistry(), {"ok": ready}),
    ]
    return Starlette(routes=routes, middleware=[bearer_auth(verifier, routes)])


async def get(app: Starlette, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.get(path, headers=headers)


async def test_the_routes_answer_401_403_200_by_token(
    keys: auth.KeyPair, verifier: TokenVerifier
) -> None:
    app = app_with(verifier)
    ada = auth.mint_token(keys.private, "ada")
    ops = auth.mint_token(keys.private, "ops", operator=True)

    missing = await get(app, "/v1/users/ada/balance")
    bad = await get(app, "/v1/users/ada/balance", "not.a.token")
    others = await get(app, "/v1/users/bob/balance", ada)

    assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert (bad.status_code, bad.headers["WWW-Authenticate"]) == (
        401,
        'Bearer realm="coinstream", error="invalid_token"',
    )
    assert (others.status_code, others.json()["error"]) == (403, "forbidden")
    assert (await get(app, "/v1/users/ada/balance", ada)).json() == {"user_id": "ada"}
    assert (await get(app, "/v1/users/bob/balance", ops)).status_code == 200
    assert (await get(app, "/v1/nowhere")).status_code == 401  # protected unless open


async def test_open_routes_and_health_need_no_token_and_metrics_needs_an_operator(
    keys: auth.KeyPair, verifier: TokenVerifier
) -> None:
    app = app_with(verifier)

    assert (await get(app, "/v1/gifts")).status_code == 200
    assert (await get(app, "/health/live")).status_code == 200
    assert (await get(app, "/health/ready")).status_code == 200
    assert (await get(app, "/metrics")).status_code == 401
    assert (await get(app, "/metrics", auth.mint_token(keys.private, "ada"))).status_code == 403
    ops = auth.mint_token(keys.private, "ops", operator=True)
    assert (await get(app, "/metrics", ops)).status_code == 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_coinstream_token_prints_a_token_of_the_dev_key(
    keys: auth.KeyPair, verifier: TokenVerifier, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = {"COINSTREAM_JWT_PRIVATE_KEY_FILE": str(keys.private)}
    printed = runner.invoke(cli, ["token", "ada", "--operator", "--ttl", "30m"], env=env)
    missing = runner.invoke(
        cli, ["token", "ada"], env={"COINSTREAM_JWT_PRIVATE_KEY_FILE": str(tmp_path / "none")}
    )

    assert printed.exit_code == 0, printed.output
    found = verifier.verify(printed.stdout.strip())
    assert (found.subject, found.operator) == ("ada", True)
    assert missing.exit_code == 1 and "run `make up` first" in missing.output
