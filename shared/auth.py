"""Bearer tokens of the HTTP reads: who asks (CONTRACT.md, Security).

A token is a JWT signed with an asymmetric key (EdDSA, ECDSA or RSA; never `none`, never
an HMAC secret). Its `sub` is the user or creator it speaks for; a `scope` holding
`operator` lets it read anyone's data. Services only verify, with the public key of
`JWT_PUBLIC_KEY_FILE` (PEM) or the keys published at `JWT_JWKS_URL`; `JWT_ISSUER` and
`JWT_AUDIENCE`, when set, must match the token's `iss` and `aud`. A service with neither
key refuses to start: no configuration never means "no authentication".

`generate_key_pair` and `mint_token` are the local stack's issuer (`coinstream token`,
tests); production tokens come from the platform's identity provider.
"""

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from pydantic_settings import BaseSettings, SettingsConfigDict

OPERATOR_SCOPE = "operator"
LEEWAY_S = 10  # clock skew between the issuer and us
DEFAULT_TTL = timedelta(hours=1)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
"""Every algorithm a token may be signed with: public-key signatures only."""

_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")

PublicKey = (
    ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
)
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class AuthConfigError(ValueError):
    """Settings that cannot verify (or sign) a token: no key, an unreadable or unusable one."""


class TokenError(Exception):
    """A token that does not authenticate anyone (missing, malformed, badly signed, expired)."""


class TokenKeysUnavailable(TokenError):
    """The JWKS could not be fetched: the token may be fine, we cannot tell now."""


class AuthSettings(BaseSettings):
    """How a service verifies bearer tokens (`JWT_*` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="JWT_", extra="ignore", frozen=True)

    public_key_file: Path | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    scopes: frozenset[str] = frozenset()

    @property
    def operator(self) -> bool:
        return OPERATOR_SCOPE in self.scopes

    def may_read(self, owner_id: str) -> bool:
        """A user reads their own data; an operator reads anyone's."""
        return self.operator or self.subject == owner_id


class TokenVerifier:
    """Checks a token's signature, expiry, issuer and audience; answers its Principal."""

    def __init__(
        self,
        *,
        key: PublicKey | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        if (key is None) == (jwks_url is None):
            raise AuthConfigError("a token verifier needs exactly one of a public key or a JWKS")
        self._key = key
        self._algorithms = algorithms_for(key) if key is not None else ()
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True) if jwks_url else None
        self._issuer = issuer
        self._audience = audience

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> "TokenVerifier":
        """The verifier a service runs with; fails (closed) without a usable key."""
        if settings.public_key_file is not None and settings.jwks_url:
            raise AuthConfigError("set JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL, not both")
        if settings.public_key_file is None and not settings.jwks_url:
            raise AuthConfigError(
                "no key to verify HTTP bearer tokens: set JWT_PUBLIC_KEY_FILE (a PEM public "
                "key) or JWT_JWKS_URL (the identity provider's JWKS)"
            )
        key = load_public_key(settings.public_key_file) if settings.public_key_file else None
        return cls(
            key=key,
            jwks_url=settings.jwks_url or None,
            issuer=settings.issuer,
            audience=settings.audience,
        )

    @property
    def fetches_keys(self) -> bool:
        """Whether `verify` may block on the network (a JWKS not cached yet)."""
        return self._jwks is not None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; TokenError with a short reason otherwise."""
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.PyJWKClientConnectionError:
            raise TokenKeysUnavailable("the token signing keys cannot be fetched") from None
        except jwt.PyJWTError as error:
            raise TokenError(f"invalid token: {error}") from None
        return Principal(subject=_subject(claims), scopes=_scopes(claims))

    def _key_for(self, token: str) -> tuple[Any, tuple[str, ...]]:
        if self._jwks is None:
            return self._key, self._algorithms
        signing = self._jwks.get_signing_key_from_jwt(token)
        # A JWKS may hold symmetric ("oct") keys too: never accept one.
        if signing.algorithm_name not in ASYMMETRIC_ALGORITHMS:
            raise jwt.InvalidAlgorithmError(f"key {signing.key_id!r} is not an asymmetric key")
        return signing, (signing.algorithm_name,)


def algorithms_for(key: PublicKey | PrivateKey) -> tuple[str, ...]:
    """The algorithms a key may sign or verify with: its own family only."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        try:
            return (_EC_ALGORITHM[key.curve.name],)
        except KeyError:
            raise AuthConfigError(f"unsupported elliptic curve {key.curve.name}") from None
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise AuthConfigError(f"an RSA key of {key.key_size} bits is too weak (2048 at least)")
        return _RSA_ALGORITHMS
    raise AuthConfigError(f"unsupported key type {type(key).__name__}")


def load_public_key(path: Path) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo) that can verify tokens."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as error:
        raise AuthConfigError(f"cannot read JWT_PUBLIC_KEY_FILE {path}: {error.strerror}") from None
    except ValueError:
        raise AuthConfigError(f"JWT_PUBLIC_KEY_FILE {path} is not a PEM public key") from None
    if not isinstance(key, PublicKey):
        raise AuthConfigError(f"JWT_PUBLIC_KEY_FILE {path}: unsupported key type")
    algorithms_for(key)  # refuses weak or unknown keys now, not at the first request
    return key


def _subject(claims: dict[str, Any]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenError("invalid token: no subject")
    return subject


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """OAuth's space-separated `scope` string (a list is accepted too)."""
    scope = claims.get("scope", "")
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return frozenset(scope)
    raise TokenError("invalid token: malformed scope")


# ─── The local stack's issuer ──────────────────────────────────────────────────────


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def generate_key_pair(private_path: Path, public_path: Path) -> KeyPair:
    """A new Ed25519 key pair as PEM files: the private key readable by its owner only
    (0600, in a folder made 0700), the public key 0644. Replaces existing files."""
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(private_path, private_pem, 0o600)
    _write(public_path, public_pem, 0o644)
    return KeyPair(private_path, public_path)


def ensure_key_pair(private_path: Path, public_path: Path) -> KeyPair:
    """The key pair at these paths, made once (kept as it is when both files exist)."""
    if private_path.is_file() and public_path.is_file():
        return KeyPair(private_path, public_path)
    return generate_key_pair(private_path, public_path)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary file created with `mode`, then rename: a reader never sees a
    half-written key, and a private key is never readable by others, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)  # the umask may have narrowed a public key's mode
    os.replace(temporary, path)


def load_private_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise AuthConfigError(
            f"cannot read the token signing key {path}: {error.strerror}"
        ) from None
    except (ValueError, TypeError):
        raise AuthConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, PrivateKey):
        raise AuthConfigError(f"{path}: unsupported key type")
    return key


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`3600`, `30m`, `12h`, `7d`: a token's lifetime, positive."""
    value, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"{text!r} is not a duration such as 3600, 30m, 12h or 7d")
    return timedelta(seconds=int(value) * _UNITS[unit])


def mint_token(
    private_key_path: Path,
    subject: str,
    *,
    operator: bool = False,
    ttl: timedelta = DEFAULT_TTL,
    issuer: str | None = None,
    audience: str | None = None,
    now: datetime | None = None,
) -> str:
    """A bearer token for `subject` (a user or creator id), signed with the private key
    at `private_key_path`; `operator` adds the operator scope (read anyone's data)."""
    if not subject:
        raise ValueError("a token needs a subject")
    key = load_private_key(private_key_path)
    issued = now or datetime.now(UTC)
    claims: dict[str, Any] = {"sub": subject, "iat": issued, "exp": issued + ttl}
    if operator:
        claims["scope"] = OPERATOR_SCOPE
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, key, algorithm=algorithms_for(key)[0])
