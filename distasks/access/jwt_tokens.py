"""JWT bearer tokens from an external identity provider (architecture §7).

Owns the keys (an HS256 secret from a file; the IdP's public keys, a JWKS, from a file or
a URL, read again by `run` every auth.jwt.jwks_refresh_s and sooner when a token names an
unknown `kid`), the check of a token, and the mapping of its claims to a Principal. It
knows no HTTP status: api/access.py turns a TokenRefused into a 401.

Algorithm confusion is ruled out by construction: the algorithm must be on the configured
list, an HS256 token is checked only against the secret and an RS256 or EdDSA token only
against a JWKS key of that same algorithm, and PyJWT is told the one algorithm expected.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import trio

from distasks.access.principals import SCOPES, Principal
from distasks.config import JwtConfig
from distasks.domain.errors import ConfigError
from distasks.domain.tenancy import DEFAULT_TENANT, TENANT_RE

log = logging.getLogger(__name__)

# At most one early JWKS read (a token naming an unknown kid) per this many seconds, so
# that a flood of made-up kids costs the IdP one request per period.
EARLY_REFRESH_S = 30.0
# Largest JWKS document accepted; real ones are a few kB.
MAX_JWKS_BYTES = 1024 * 1024
# Shortest HS256 secret accepted: 256 bits, the hash's own size (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32
# Longest subject kept as a principal id (it is written to every audit row).
MAX_SUBJECT_CHARS = 200
# Claims every token must carry; `nbf` is checked when present.
REQUIRED_CLAIMS = ["exp", "iss", "aud"]


class TokenRefused(Exception):
    """A token that makes no principal. `reason` says what was wrong in general terms
    (expired, wrong audience, bad signature) and never repeats the token or its claims."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UnknownKey(TokenRefused):
    def __init__(self) -> None:
        super().__init__("it names a signing key this server does not know")


class KeysUnavailable(Exception):
    """The JWKS could not be read: the IdP did not answer, or answered badly."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable keys of a JWKS: by `kid`, and those without one."""

    by_kid: Mapping[str, jwt.PyJWK] = field(default_factory=dict)
    unnamed: tuple[jwt.PyJWK, ...] = ()

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.unnamed)

    def find(self, alg: str, kid: str | None) -> jwt.PyJWK | None:
        """The key of a token signed with `alg` naming `kid`; without a kid, the only key
        for `alg`. None when there is no such key (the set may be out of date)."""
        if kid is not None:
            key = self.by_kid.get(kid)
            if key is not None and key.algorithm_name != alg:
                raise TokenRefused("its algorithm does not match its signing key")
            return key
        fits = [k for k in (*self.by_kid.values(), *self.unnamed) if k.algorithm_name == alg]
        return fits[0] if len(fits) == 1 else None


def parse_jwks(text: bytes | str, algorithms: Iterable[str]) -> KeySet:
    """The signing keys of a JWKS document usable with `algorithms`; ValueError saying what
    is wrong. Symmetric (`oct`) keys are skipped: a published key set holds public keys,
    and the HS256 secret comes only from its own file."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValueError("the JWKS is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('the JWKS has no "keys" list')
    wanted = {a for a in algorithms if a != "HS256"}
    by_kid: dict[str, jwt.PyJWK] = {}
    unnamed: list[jwt.PyJWK] = []
    for raw in doc["keys"]:
        if not isinstance(raw, dict) or raw.get("kty") == "oct" or raw.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(raw)
        except jwt.PyJWTError:
            continue  # a key type or curve PyJWT does not know
        if key.algorithm_name not in wanted:
            continue
        kid = raw.get("kid")
        if isinstance(kid, str) and kid:
            by_kid[kid] = key
        else:
            unnamed.append(key)
    if not by_kid and not unnamed:
        raise ValueError(f"the JWKS has no signing key for {', '.join(sorted(wanted))}")
    return KeySet(by_kid, tuple(unnamed))


def read_secret(path: str) -> bytes:
    """The HS256 secret in the file at `path`, without a final newline; ConfigError when
    it cannot be read or is too short to be a secret."""
    try:
        secret = Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as e:
        raise ConfigError("auth.jwt.hs256_secret_file", f"cannot read {path}: {e.strerror}"
                          ) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError("auth.jwt.hs256_secret_file",
                          f"the secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


async def read_jwks_file(path: str) -> bytes:
    """The JWKS file's bytes, read in a thread; KeysUnavailable when it cannot be read."""
    try:
        data = await trio.Path(path).read_bytes()
    except OSError as e:
        raise KeysUnavailable(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_JWKS_BYTES:
        raise KeysUnavailable(f"{path} is larger than {MAX_JWKS_BYTES} bytes")
    return data


async def fetch_jwks(url: str) -> bytes:
    """The JWKS document at `url` (no redirect followed: a redirect could lead to plain
    http); KeysUnavailable on any failure. The caller bounds the time."""
    try:
        async with (
            httpx.AsyncClient(follow_redirects=False) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as r,
        ):
            if r.status_code != 200:
                raise KeysUnavailable(f"the JWKS URL answered {r.status_code}")
            body = b""
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise KeysUnavailable(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
            return body
    except httpx.HTTPError as e:
        raise KeysUnavailable(f"the JWKS URL could not be read ({type(e).__name__})") from None


def scope_table(entries: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """auth.jwt.scope_map ("idp-name=distasks-scope", validated by config) as a table."""
    table: dict[str, list[str]] = {}
    for entry in entries:
        idp, _, scope = entry.partition("=")
        table.setdefault(idp.strip(), []).append(scope.strip())
    return {name: tuple(scopes) for name, scopes in table.items()}


class Verifier:
    """Checks bearer tokens and maps their claims to principals (auth.jwt).

    `read_keys` reads the JWKS (from its file or URL); None when only HS256 is used. The
    set it read last is kept until a read succeeds, so an IdP that stops answering costs
    nothing until it rotates its keys. `clock` is monotonic seconds (rate of early reads).
    """

    def __init__(self, config: JwtConfig, *, secret: bytes | None, keys: KeySet = KeySet(),
                 read_keys: Callable[[], Awaitable[bytes]] | None = None,
                 clock: Callable[[], float] = trio.current_time):
        self.config = config
        self.keys = keys
        self._secret = secret
        self._read_keys = read_keys
        self._clock = clock
        self._scope_map = scope_table(config.scope_map)
        self._lock = trio.Lock()
        self._early_at: float | None = None
        self._failing = False

    async def principal(self, token: str) -> Principal:
        """The principal `token` stands for; TokenRefused saying why not. A token naming
        a key not in the set makes the set be read again first (at most every
        EARLY_REFRESH_S), so a key the IdP just rotated in works at once."""
        try:
            return self.principal_nowait(token)
        except UnknownKey:
            if self._read_keys is None:
                raise
        await self.refresh_early()
        return self.principal_nowait(token)

    def principal_nowait(self, token: str) -> Principal:
        """`principal` with the keys at hand; UnknownKey when the token's key is not."""
        return self._map(self._claims(token))

    async def refresh(self) -> bool:
        """Read the JWKS again; True if the new set is in use. A failure keeps the last
        good set and is logged once, until a read succeeds again."""
        async with self._lock:
            return await self._refresh_locked()

    async def refresh_early(self) -> None:
        """`refresh`, unless an early read was made less than EARLY_REFRESH_S ago (a
        periodic read does not count: a key rotated in just after it works at once). A
        read under way is waited for first."""
        async with self._lock:
            now = self._clock()
            if self._early_at is not None and now - self._early_at < EARLY_REFRESH_S:
                return
            self._early_at = now
            await self._refresh_locked()

    async def _refresh_locked(self) -> bool:
        assert self._read_keys is not None
        problem = f"no answer within {self.config.jwks_timeout_s:g}s"
        with trio.move_on_after(self.config.jwks_timeout_s):
            try:
                keys = parse_jwks(await self._read_keys(), self.config.algorithms)
            except (KeysUnavailable, ValueError) as e:
                problem = str(e)
            else:
                if self._failing:
                    log.info("JWKS read again: %d key(s)", len(keys),
                             extra={"event": "jwks_recovered", "keys": len(keys)})
                self.keys, self._failing = keys, False
                log.debug("JWKS read: %d key(s)", len(keys),
                          extra={"event": "jwks_read", "keys": len(keys)})
                return True
        if not self._failing:
            log.warning("cannot read the JWKS, keeping the %d key(s) read before: %s",
                        len(self.keys), problem,
                        extra={"event": "jwks_failed", "keys": len(self.keys)})
        self._failing = True
        return False

    def _claims(self, token: str) -> dict[str, Any]:
        c = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("it is not a well-formed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in c.algorithms:
            raise TokenRefused("it is signed with an algorithm this server does not accept")
        if kid is not None and not isinstance(kid, str):
            raise TokenRefused("it is not a well-formed JWT")
        key: Any
        if alg == "HS256":
            if self._secret is None:
                raise TokenRefused("it is signed with an algorithm this server does not accept")
            key = self._secret
        else:
            jwk = self.keys.find(alg, kid)
            if jwk is None:
                raise UnknownKey()
            key = jwk.key
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=c.audience, issuer=c.issuer,
                leeway=c.leeway_s, options={"require": REQUIRED_CLAIMS})
        except jwt.ExpiredSignatureError:
            raise TokenRefused("it has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("it is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("it is meant for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("it comes from another issuer") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenRefused(f"it lacks the claim {e.claim!r}") from None
        except jwt.exceptions.InvalidSubjectError:
            raise TokenRefused("its 'sub' claim is not a usable subject") from None
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
            raise TokenRefused("its signature does not verify") from None
        except jwt.PyJWTError:
            raise TokenRefused("it is not a valid JWT") from None
        return claims

    def _map(self, claims: dict[str, Any]) -> Principal:
        c = self.config
        subject = claims.get(c.subject_claim)
        if (not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_CHARS
                or not subject.isprintable()):
            raise TokenRefused(f"its {c.subject_claim!r} claim is not a usable subject")
        tenant = claims.get(c.tenant_claim)
        if tenant is None:
            if not c.default_tenant:
                raise TokenRefused(f"it names no tenant (claim {c.tenant_claim!r})")
            tenant = c.default_tenant
        if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
            raise TokenRefused(f"its {c.tenant_claim!r} claim is not a valid tenant name")
        if c.tenants and tenant not in c.tenants:
            raise TokenRefused(f"its tenant {tenant!r} is not in auth.jwt.tenants")
        if not c.tenants and tenant == DEFAULT_TENANT != c.default_tenant:
            # The operator's tenant only by the configuration's choice, never a claim's.
            raise TokenRefused(f"its tenant {tenant!r} is the operator's; name it in "
                               "auth.jwt.tenants to allow it")
        raw = claims.get(c.scopes_claim)
        if raw is None:
            names: list[str] = []
        elif isinstance(raw, str):
            names = raw.split()
        elif isinstance(raw, list) and all(isinstance(n, str) for n in raw):
            names = raw
        else:
            raise TokenRefused(f"its {c.scopes_claim!r} claim is neither a string nor a list")
        scopes = {s for n in names for s in self._scope_map.get(n, (n,)) if s in SCOPES}
        return Principal(id=f"jwt:{subject}", name=subject, tenant=tenant,
                         scopes=frozenset(scopes),
                         # jwt.decode checked it is a number (a required claim).
                         expires_at=datetime.fromtimestamp(claims["exp"], UTC))


def from_config(config: JwtConfig) -> Verifier | None:
    """The verifier auth.jwt describes, None when it is off; reads the HS256 secret now
    (ConfigError naming the key if it cannot). The JWKS is read by `run`."""
    if not config.enabled:
        return None
    secret = read_secret(config.hs256_secret_file) if config.hs256_secret_file else None
    read_keys: Callable[[], Awaitable[bytes]] | None = None
    if config.jwks_url:
        url = config.jwks_url

        async def read_keys() -> bytes:
            return await fetch_jwks(url)
    elif config.jwks_file:
        path = config.jwks_file

        async def read_keys() -> bytes:
            return await read_jwks_file(path)
    return Verifier(config, secret=secret, read_keys=read_keys)


def check_jwks_file(config: JwtConfig) -> None:
    """ConfigError unless auth.jwt.jwks_file holds a usable key set (`check-config`)."""
    if not (config.enabled and config.jwks_file):
        return
    try:
        parse_jwks(Path(config.jwks_file).read_bytes(), config.algorithms)
    except OSError as e:
        raise ConfigError("auth.jwt.jwks_file", f"cannot read {config.jwks_file}: {e.strerror}"
                          ) from None
    except ValueError as e:
        raise ConfigError("auth.jwt.jwks_file", str(e)) from None


async def run(verifier: Verifier, *, interval_s: float,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Read the JWKS now (bounded by auth.jwt.jwks_timeout_s, so start-up waits at most
    that long for the IdP) and then every `interval_s`, ± 10 % so that a fleet's daemons
    do not ask in step. A failed read keeps the keys read before."""
    await verifier.refresh()
    task_status.started()
    while True:
        await trio.sleep(interval_s * random.uniform(0.9, 1.1))
        await verifier.refresh()
