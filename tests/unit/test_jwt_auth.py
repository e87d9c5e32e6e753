"""distasks.access.jwt_tokens: HS256, RS256 and EdDSA tokens with keys made here; each claim check,
algorithm confusion, the JWKS read again for an unknown kid, claims mapped to a principal,
and the [auth.jwt] config section."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from distasks.access import jwt_tokens
from distasks.access.jwt_tokens import (
    EARLY_REFRESH_S,
    KeySet,
    KeysUnavailable,
    TokenRefused,
    Verifier,
)
from distasks.config import JwtConfig, load
from distasks.domain.errors import ConfigError

ISSUER = "https://idp.example"
AUDIENCE = "distasks"
SECRET = b"s" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
CONFIG = JwtConfig(enabled=True, issuer=ISSUER, audience=AUDIENCE,
                   algorithms=("HS256", "RS256", "EdDSA"), hs256_secret_file="unused",
                   jwks_file="unused", leeway_s=5.0, default_tenant="default")


def jwk(public_key: Any, kid: str | None) -> dict[str, Any]:
    algorithm = (jwt.algorithms.RSAAlgorithm if isinstance(public_key, rsa.RSAPublicKey)
                 else jwt.algorithms.OKPAlgorithm)
    key: dict[str, Any] = algorithm.to_jwk(public_key, as_dict=True)
    if kid is not None:
        key["kid"] = kid
    return key


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


KEYS = jwt_tokens.parse_jwks(jwks(jwk(RSA_KEY.public_key(), "rsa-1"),
                                jwk(ED_KEY.public_key(), "ed-1")), CONFIG.algorithms)


def mint(key: Any, alg: str, *, kid: str | None = None, **claims: Any) -> str:
    """A token signed with `key`; `claims` replace the defaults, None removes one."""
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 300,
               "scope": "tasks:write tasks:read"} | claims
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=alg,
                      headers={"kid": kid} if kid else None)


def verifier(config: JwtConfig = CONFIG, **kw: Any) -> Verifier:
    return Verifier(config, secret=SECRET, keys=kw.pop("keys", KEYS), **kw)


async def refused(v: Verifier, token: str) -> str:
    with pytest.raises(TokenRefused) as e:
        await v.principal(token)
    assert token not in e.value.reason
    return e.value.reason


# --- the three algorithms ---------------------------------------------------------------


@pytest.mark.parametrize(("key", "alg", "kid"), [
    (SECRET, "HS256", None), (RSA_KEY, "RS256", "rsa-1"), (ED_KEY, "EdDSA", "ed-1")])
async def test_each_algorithm_makes_a_principal_named_after_the_subject(key, alg, kid):
    who = await verifier().principal(mint(key, alg, kid=kid, tenant="acme"))
    assert (who.id, who.name, who.tenant) == ("jwt:alice", "alice", "acme")
    assert who.scopes == {"tasks:write", "tasks:read"}
    assert who.rate_per_minute is None  # the configured limits apply, as to keys


async def test_a_token_without_kid_uses_the_only_key_of_its_algorithm():
    assert (await verifier().principal(mint(ED_KEY, "EdDSA"))).id == "jwt:alice"
    listed = await verifier().principal(mint(ED_KEY, "EdDSA", aud=["other", AUDIENCE]))
    assert listed.id == "jwt:alice"


# --- claims -----------------------------------------------------------------------------


@pytest.mark.parametrize(("claims", "reason"), [
    ({"aud": "someone-else"}, "it is meant for another audience"),
    ({"iss": "https://evil.example"}, "it comes from another issuer"),
    ({"iss": ISSUER[:-1]}, "it comes from another issuer"),
    ({"iss": None}, "it lacks the claim 'iss'"),
    ({"aud": [AUDIENCE + "x", "other"]}, "it is meant for another audience"),
    # Times relative to when the test runs (collection may be minutes earlier).
    ({"exp": -60}, "it has expired"),
    ({"nbf": +60}, "it is not valid yet"),
    ({"exp": None}, "it lacks the claim 'exp'"),
    ({"aud": None}, "it lacks the claim 'aud'"),
])
async def test_claims_that_do_not_hold_are_refused_saying_which(claims, reason):
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") and isinstance(v, int) else v
              for k, v in claims.items()}
    for key, alg, kid in ((SECRET, "HS256", None), (RSA_KEY, "RS256", "rsa-1")):
        assert await refused(verifier(), mint(key, alg, kid=kid, **claims)) == reason


async def test_the_leeway_covers_a_little_clock_skew():
    just_expired = mint(RSA_KEY, "RS256", kid="rsa-1", exp=int(time.time()) - 2)
    assert (await verifier().principal(just_expired)).id == "jwt:alice"


async def test_a_bad_signature_is_refused():
    forged = mint(OTHER_RSA_KEY, "RS256", kid="rsa-1")
    assert await refused(verifier(), forged) == "its signature does not verify"
    other_secret = mint(b"t" * 32, "HS256")
    assert await refused(verifier(), other_secret) == "its signature does not verify"
    head, payload, signature = mint(ED_KEY, "EdDSA", kid="ed-1").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "keys:admin"
    altered = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert await refused(verifier(), f"{head}.{altered}.{signature}") == (
        "its signature does not verify")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hand_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """A token made without PyJWT, which refuses to make the ones an attacker would."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


CLAIMS = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 86400,
          "scope": "keys:admin"}


async def test_alg_none_is_refused():
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = f"{header}.{b64(json.dumps(CLAIMS).encode())}."
    assert await refused(verifier(), unsigned) == (
        "it is signed with an algorithm this server does not accept")
    with pytest.raises(ConfigError) as e:
        load(None, env={"DISTASKS_AUTH_JWT_ALGORITHMS": "none"})
    assert e.value.key == "auth.jwt.algorithms"


async def test_hs256_signed_with_the_rsa_public_key_as_secret_is_refused():
    """The classic confusion: the attacker knows the public key and signs HS256 with it.
    With HS256 off the algorithm is refused; with it on, only the secret checks it."""
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    for kid in ("rsa-1", None):
        header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
        token = hand_signed(header, CLAIMS, pem)
        assert await refused(verifier(), token) == "its signature does not verify"
        rs_only = replace(CONFIG, algorithms=("RS256",), hs256_secret_file="")
        assert await refused(Verifier(rs_only, secret=None, keys=KEYS), token) == (
            "it is signed with an algorithm this server does not accept")


async def test_a_token_whose_algorithm_does_not_match_its_key_is_refused():
    ed_token_naming_the_rsa_key = mint(ED_KEY, "EdDSA", kid="rsa-1")
    assert await refused(verifier(), ed_token_naming_the_rsa_key) == (
        "its algorithm does not match its signing key")


async def test_a_malformed_token_is_refused_without_echoing_it():
    assert await refused(verifier(), "not-a-jwt") == "it is not a well-formed JWT"
    assert await refused(verifier(), "a.b.c") == "it is not a well-formed JWT"


# --- keys read again --------------------------------------------------------------------


class KeySource:
    """The JWKS a verifier reads, counted; `fail` makes the next reads fail."""

    def __init__(self, document: bytes):
        self.document = document
        self.reads = 0
        self.fail = False

    async def __call__(self) -> bytes:
        self.reads += 1
        if self.fail:
            raise KeysUnavailable("the JWKS URL answered 503")
        return self.document


async def test_an_unknown_kid_reads_the_keys_again_at_most_every_early_refresh_period():
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    source = KeySource(jwks(jwk(RSA_KEY.public_key(), "rsa-1")))
    now = [100.0]
    v = verifier(keys=KeySet(), read_keys=source, clock=lambda: now[0])
    assert await v.refresh() and source.reads == 1
    # The IdP rotates in a new key: the first token naming it makes the set be read again.
    source.document = jwks(jwk(RSA_KEY.public_key(), "rsa-1"), jwk(rotated.public_key(), "rsa-2"))
    assert (await v.principal(mint(rotated, "RS256", kid="rsa-2"))).id == "jwt:alice"
    assert source.reads == 2
    # Made-up kids: no read again within the period, one after it.
    for _ in range(5):
        assert await refused(v, mint(rotated, "RS256", kid="made-up")) == (
            "it names a signing key this server does not know")
    assert source.reads == 2
    now[0] += EARLY_REFRESH_S
    await refused(v, mint(rotated, "RS256", kid="made-up"))
    assert source.reads == 3


async def test_a_failed_read_keeps_the_keys_read_before(caplog):
    source = KeySource(jwks(jwk(RSA_KEY.public_key(), "rsa-1")))
    v = verifier(keys=KeySet(), read_keys=source)
    assert await v.refresh()
    source.fail = True
    assert not await v.refresh() and not await v.refresh()
    assert (await v.principal(mint(RSA_KEY, "RS256", kid="rsa-1"))).id == "jwt:alice"
    failures = [r for r in caplog.records if getattr(r, "event", None) == "jwks_failed"]
    assert len(failures) == 1  # logged once, not at every read
    source.document = b"<html>oops</html>"
    source.fail = False
    assert not await v.refresh()
    assert len(v.keys) == 1


def test_a_jwks_keeps_only_signing_keys_of_the_accepted_algorithms():
    doc = jwks(jwk(RSA_KEY.public_key(), "rsa-1"), jwk(ED_KEY.public_key(), "ed-1"),
               {"kty": "oct", "kid": "shared", "k": b64(SECRET)},
               {**jwk(OTHER_RSA_KEY.public_key(), "enc-1"), "use": "enc"},
               {"kty": "EC", "crv": "P-999", "kid": "odd"})
    keys = jwt_tokens.parse_jwks(doc, ("RS256",))
    assert set(keys.by_kid) == {"rsa-1"}
    with pytest.raises(ValueError, match="no signing key"):
        jwt_tokens.parse_jwks(doc, ("HS256",))
    with pytest.raises(ValueError, match="not JSON"):
        jwt_tokens.parse_jwks(b"{", ("RS256",))


# --- claims to a principal --------------------------------------------------------------


async def test_tenant_and_scopes_are_mapped_by_configuration():
    mapped = replace(CONFIG, tenant_claim="org", scopes_claim="roles", default_tenant="",
                     scope_map=("ops=queues:admin", "ops=dlq:admin", "reader=tasks:read"))
    v = verifier(mapped)
    who = await v.principal(mint(SECRET, "HS256", org="acme",
                                 roles=["ops", "reader", "tasks:cancel", "superuser"]))
    assert (who.tenant, who.scopes) == (
        "acme", {"queues:admin", "dlq:admin", "tasks:read", "tasks:cancel"})
    assert await refused(v, mint(SECRET, "HS256", roles="ops")) == (
        "it names no tenant (claim 'org')")
    assert await refused(v, mint(SECRET, "HS256", org="Not A Tenant")) == (
        "its 'org' claim is not a valid tenant name")
    assert await refused(v, mint(SECRET, "HS256", org="acme", roles={"a": 1})) == (
        "its 'roles' claim is neither a string nor a list")
    defaulted = await verifier().principal(mint(SECRET, "HS256", scope=None))
    assert (defaulted.tenant, defaulted.scopes) == ("default", frozenset())

    # The operator's tenant only where the configuration says so.
    assert await refused(v, mint(SECRET, "HS256", org="default")) == (
        "its tenant 'default' is the operator's; name it in auth.jwt.tenants to allow it")
    listed = verifier(replace(mapped, tenants=("acme", "default")))
    assert (await listed.principal(mint(SECRET, "HS256", org="default"))).tenant == "default"
    assert await refused(listed, mint(SECRET, "HS256", org="beta")) == (
        "its tenant 'beta' is not in auth.jwt.tenants")


async def test_a_subject_that_cannot_be_an_id_is_refused():
    for sub in (None, "", 42, "x" * 201, "alice\x1b[31m"):
        assert await refused(verifier(), mint(SECRET, "HS256", sub=sub)) == (
            "its 'sub' claim is not a usable subject")


# --- [auth.jwt] -------------------------------------------------------------------------


def test_the_section_is_read_from_its_toml_table_and_the_environment(tmp_path: Path):
    path = tmp_path / "distasks.toml"
    path.write_text('[auth.jwt]\nenabled = true\nissuer = "https://idp.example"\n'
                    'audience = "distasks"\njwks_url = "https://idp.example/jwks"\n')
    config = load(path, env={"DISTASKS_AUTH_JWT_LEEWAY_S": "10",
                             "DISTASKS_AUTH_JWT_SCOPE_MAP": "ops=queues:admin,ops=dlq:admin"})
    j = config.auth.jwt
    assert (j.enabled, j.issuer, j.leeway_s, j.algorithms) == (
        True, "https://idp.example", 10.0, ("RS256", "EdDSA"))
    assert j.scope_map == ("ops=queues:admin", "ops=dlq:admin")
    assert "jwt=on(issuer=https://idp.example" in config.summary()
    assert load(None, env={}).auth.jwt == JwtConfig()


@pytest.mark.parametrize(("env", "key"), [
    ({"DISTASKS_AUTH_JWT_AUDIENCE": "distasks"}, "auth.jwt.issuer"),
    ({"DISTASKS_AUTH_JWT_ISSUER": "https://idp.example"}, "auth.jwt.audience"),
    ({"DISTASKS_AUTH_JWT_JWKS_URL": "http://idp.example/jwks"}, "auth.jwt.jwks_url"),
    ({"DISTASKS_AUTH_JWT_JWKS_URL": "ftp://idp.example/jwks"}, "auth.jwt.jwks_url"),
    ({"DISTASKS_AUTH_JWT_JWKS_URL": "http://127.0.0.1.evil.example/jwks"}, "auth.jwt.jwks_url"),
    ({"DISTASKS_AUTH_JWT_ALGORITHMS": "HS256"}, "auth.jwt.hs256_secret_file"),
    ({"DISTASKS_AUTH_JWT_JWKS_URL": ""}, "auth.jwt.jwks_file"),
    ({"DISTASKS_AUTH_JWT_SCOPE_MAP": "ops=root"}, "auth.jwt.scope_map"),
    ({"DISTASKS_AUTH_JWT_DEFAULT_TENANT": "Acme!"}, "auth.jwt.default_tenant"),
    ({"DISTASKS_AUTH_JWT_LEEWAY_S": "3600"}, "auth.jwt.leeway_s"),
])
def test_a_bad_section_names_the_key(env, key):
    base = {"DISTASKS_AUTH_JWT_ENABLED": "true", "DISTASKS_AUTH_JWT_ISSUER": "",
            "DISTASKS_AUTH_JWT_AUDIENCE": "", "DISTASKS_AUTH_JWT_JWKS_URL": "https://i/jwks"}
    if key not in ("auth.jwt.issuer", "auth.jwt.audience"):
        base |= {"DISTASKS_AUTH_JWT_ISSUER": "https://idp.example",
                 "DISTASKS_AUTH_JWT_AUDIENCE": "distasks"}
    with pytest.raises(ConfigError) as e:
        load(None, env=base | env)
    assert e.value.key == key


def test_plain_http_keys_only_from_this_machine_and_files_checked_at_start(tmp_path: Path):
    env = {"DISTASKS_AUTH_JWT_ENABLED": "true", "DISTASKS_AUTH_JWT_ISSUER": "https://i",
           "DISTASKS_AUTH_JWT_AUDIENCE": "distasks"}
    local = load(None, env=env | {"DISTASKS_AUTH_JWT_JWKS_URL": "http://127.0.0.1:9/jwks"})
    assert jwt_tokens.from_config(local.auth.jwt) is not None
    short = tmp_path / "secret"
    short.write_bytes(b"too short\n")
    hs = load(None, env=env | {"DISTASKS_AUTH_JWT_ALGORITHMS": "HS256",
                               "DISTASKS_AUTH_JWT_HS256_SECRET_FILE": str(short)})
    with pytest.raises(ConfigError) as e:
        jwt_tokens.from_config(hs.auth.jwt)
    assert e.value.key == "auth.jwt.hs256_secret_file"
    bad_jwks = tmp_path / "jwks.json"
    bad_jwks.write_text('{"keys": []}')
    from_file = load(None, env=env | {"DISTASKS_AUTH_JWT_JWKS_FILE": str(bad_jwks)})
    with pytest.raises(ConfigError) as e:
        jwt_tokens.check_jwks_file(from_file.auth.jwt)
    assert e.value.key == "auth.jwt.jwks_file"
