"""Bearer JWTs verified against a JWKS (PyJWT), mapped to a principal's scopes and data scopes.

Only asymmetric algorithms are accepted (the service holds public keys only); ``exp`` and ``aud``
are required, ``iss`` when configured. A refusal carries a reason the client can act on
(expired, wrong audience, unknown signing key, bad signature), never the token itself.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from pydantic import ValidationError

from serve_app.settings import DataScope, JwtSettings

ROUTE_SCOPES = ("search", "ingest", "admin")


class TokenRejected(Exception):
    """The bearer token is not acceptable; the message says why (answered 401)."""


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments whose header starts like a JSON object (``eyJ``)."""
    return token.count(".") == 2 and token.startswith("eyJ")


class JwtVerifier:
    """Verifies tokens against the configured JWKS (a file read once per configuration, or a URL
    whose keys PyJWT caches and refetches for an unknown ``kid``)."""

    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if settings.jwks_url:
            self._client = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=5)
        else:
            assert settings.jwks_file is not None
            self._keys = jwt.PyJWKSet.from_json(settings.jwks_file.read_text(encoding="utf-8"))

    @property
    def fetches_keys(self) -> bool:
        """Verification may block on the network (run it off the event loop)."""
        return self._client is not None

    def _key(self, token: str) -> Any:
        try:
            if self._client is not None:
                return self._client.get_signing_key_from_jwt(token).key
            assert self._keys is not None
            kid = jwt.get_unverified_header(token).get("kid")
            if kid is None:
                if len(self._keys.keys) == 1:
                    return self._keys.keys[0].key
                raise TokenRejected("token has no 'kid' and the JWKS holds several keys")
            return self._keys[kid].key
        except KeyError:
            raise TokenRejected("token signed by a key not in the JWKS") from None
        except jwt.PyJWKClientError as exc:
            raise TokenRejected(f"signing key not available: {exc}") from exc
        except jwt.DecodeError as exc:
            raise TokenRejected("malformed token") from exc

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims; ``TokenRejected`` naming the reason otherwise."""
        s = self.settings
        try:
            return jwt.decode(
                token,
                self._key(token),
                algorithms=s.algorithms,
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={"require": ["exp", "aud"] + (["iss"] if s.issuer else [])},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("token not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(f"token audience not accepted (expected one of {s.audience})") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(f"token issuer not accepted (expected {s.issuer!r})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected(f"token algorithm not accepted (allowed: {s.algorithms})") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("token signature invalid") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"invalid token: {exc}") from None
        except (jwt.PyJWTError, TypeError, ValueError):
            # e.g. an ES256 header naming an RSA key: PyJWT fails on the key, not the token.
            raise TokenRejected("token algorithm does not fit its signing key") from None

    def route_scopes(self, claims: dict[str, Any]) -> list[str]:
        """``search`` / ``ingest`` / ``admin`` from the scopes claim (prefix stripped; others ignored)."""
        raw = claims.get(self.settings.scopes_claim) or []
        items = (
            raw.split() if isinstance(raw, str) else [str(v) for v in raw] if isinstance(raw, list) else []
        )
        prefix = self.settings.scope_prefix
        found = [i.removeprefix(prefix) for i in items if i.startswith(prefix)]
        return [s for s in ROUTE_SCOPES if s in found]

    def data_scope(self, claims: dict[str, Any], claim: str) -> DataScope | None:
        """The data scope of ``claim`` (absent: unrestricted); a malformed one is a rejection, never
        an unrestricted token."""
        value = claims.get(claim)
        if value is None:
            return None
        try:
            return DataScope.model_validate(json.loads(value) if isinstance(value, str) else value)
        except (ValidationError, ValueError) as exc:
            raise TokenRejected(
                f"the {claim!r} claim is not a data scope: {str(exc).splitlines()[0]}"
            ) from None
