"""Who is calling: dev tokens, JWTs, and the server API key."""

from __future__ import annotations

import hmac
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from tether.core.config import Settings
from tether.wire.errors import TetherError

ID_PATTERN = r"^[A-Za-z0-9_.@+\-]{1,128}$"  # user, device and other ids
_ID = re.compile(ID_PATTERN)
SERVER_USER = "server"
#: User ids no token may carry: the API key's identity is "server", and a token naming it
#: would otherwise share its records, channels and documents (compared case-insensitively).
RESERVED_USERS = frozenset({SERVER_USER})
#: Shortest HS256 secret accepted at start (RFC 7518 §3.2: a key of at least the hash size).
MIN_HS256_SECRET = 32


@dataclass(frozen=True)
class Identity:
    user_id: str
    device_id: str = "default"
    roles: frozenset[str] = field(default_factory=frozenset)
    is_server: bool = False  # holds the API key: may act for any user
    expires_at: float | None = None  # the token's exp (Unix seconds); None: no expiry (dev token, API key)

    @property
    def kind(self) -> str:
        """``api`` for the API key, ``user`` for a token: never equal, whatever the user id."""
        return "api" if self.is_server else "user"

    @property
    def is_admin(self) -> bool:
        return self.is_server or "admin" in self.roles

    def may_act_for(self, user_id: str) -> bool:
        return self.is_server or user_id == self.user_id


def _why(exc: Exception, algorithms: list[str]) -> str:
    """A few words on why PyJWT refused a token (a WebSocket close reason has room for 123 bytes)."""
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "it is not " + "/".join(algorithms)
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not valid yet"
    if isinstance(exc, jwt.DecodeError):
        return "malformed"
    return type(exc).__name__.removesuffix("Error")


def load_public_key(value: str) -> tuple[Any, str]:
    """``--jwt-public-key`` (PEM text, or the path of a PEM file) as a key and the algorithm it verifies.

    Raises ValueError, saying what is wrong, for a missing file or text that is not an RSA or EC public key.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text, where = value, "the PEM text"
    if not value.lstrip().startswith("-----"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{value} is neither PEM text nor a file")
        try:
            text, where = path.read_text(), str(value)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {value} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        key = load_pem_public_key(text.strip().encode())
    except (ValueError, TypeError):
        raise ValueError(f"{where} is not a PEM public key ('-----BEGIN PUBLIC KEY-----')") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, "ES256"
    raise ValueError(f"{where} is a {type(key).__name__}, not an RSA (RS256) or EC (ES256) public key")


def valid_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))  # fullmatch: '$' alone lets a trailing newline through


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth or "dev"
        self.api_key = settings.api_key
        self._key: Any = settings.jwt_secret
        self._algorithms = ["HS256"]
        if settings.jwt_public_key:
            self._key, algorithm = load_public_key(settings.jwt_public_key)
            self._algorithms = [algorithm]

    def token(self, token: str | None) -> Identity:
        if not token:
            raise TetherError("unauthorized", "missing token: pass ?token=… or 'Authorization: Bearer …'")
        if self.mode == "dev":
            user, _, device = token.partition(":")
            device = device or "default"
            if not valid_id(user) or not valid_id(device):
                looks_signed = token.count(".") == 2 and len(token) > 40  # a JWT sent to a dev server
                raise TetherError(
                    "unauthorized",
                    "this server runs --auth dev: a token is 'userId' or 'userId:deviceId', not a JWT" if looks_signed
                    else "a dev token is 'userId' or 'userId:deviceId' (up to 128 of A-Z a-z 0-9 _ . @ + -)",
                )
            _not_reserved(user)
            return Identity(user, device)
        hint = "get one with `tether token`" if self._algorithms == ["HS256"] else "get one from your token issuer"
        try:
            claims = jwt.decode(
                token, self._key, algorithms=self._algorithms, options={"require": ["sub", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise TetherError("unauthorized", f"token expired: {hint}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TetherError("unauthorized", f"invalid token: it has no '{exc.claim}' claim; {hint}") from None
        except jwt.PyJWTError as exc:
            if isinstance(exc, jwt.DecodeError) and token.count(".") != 2:  # e.g. 'alice:phone' sent to a JWT server
                raise TetherError("unauthorized", "this server runs --auth jwt and the token is not a JWT: "
                                                  "mint one with `tether token --user <id>`") from None
            # PyJWT's own text ("Invalid header string: 'utf-8' codec can't …") says little and runs long
            raise TetherError("unauthorized", f"invalid token: not a JWT signed for this server "
                                              f"({_why(exc, self._algorithms)}); {hint}") from None
        user, device = str(claims["sub"]), str(claims.get("device_id") or "default")
        if not valid_id(user) or not valid_id(device):
            raise TetherError("unauthorized", "token 'sub' or 'device_id' has characters outside A-Z a-z 0-9 _ . @ + -")
        _not_reserved(user)
        roles = claims.get("roles") or []
        if not isinstance(roles, list):
            raise TetherError("unauthorized", "token 'roles' must be a list")
        exp = claims["exp"]
        expires_at = float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
        return Identity(user, device, frozenset(map(str, roles)), expires_at=expires_at)

    def api(self, key: str) -> Identity:
        if not self.api_key:
            raise TetherError("unauthorized", "this server has no API key: set TETHER_API_KEY to use X-API-Key")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise TetherError("unauthorized", "wrong X-API-Key")
        return Identity(SERVER_USER, "server", frozenset({"admin"}), is_server=True)

    def headers(self, authorization: str | None, api_key: str | None, query_token: str | None = None,
                query_api_key: str | None = None) -> Identity:
        api_key = api_key or query_api_key  # ?api_key= on /ws: a browser cannot set headers on a WebSocket
        if api_key:
            return self.api(api_key)
        token = query_token
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value:
                raise TetherError("unauthorized", "Authorization header must be 'Bearer <token>'")
            token = value.strip()
        return self.token(token)


def _not_reserved(user: str) -> None:
    if user.lower() in RESERVED_USERS:
        raise TetherError("unauthorized", f"user id {user!r} is reserved for the server API key; no token may use it")


def mint(secret: str, user: str, *, device: str | None = None, ttl: int = 3600, roles: list[str] = (), algorithm: str = "HS256") -> str:  # type: ignore[assignment]
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + ttl}
    if device:
        claims["device_id"] = device
    if roles:
        claims["roles"] = list(roles)
    return jwt.encode(claims, secret, algorithm=algorithm)
