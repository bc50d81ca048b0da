"""Who is calling: an admitted client certificate or a bearer token, nothing else.

The gateway's TLS layer verifies client certificates against the CA (chain,
validity dates); here the verified certificate must also carry the clientAuth
extended key usage and match ``tls_allowed_dn_list`` (libvirt's setting, same DN
text form and globs). A bearer token (``authorization: Bearer <token>``) is the
other method; when a call carries one it names the caller, even on a connection
with a certificate, so that a holder of both can choose the smaller identity.

Both come from the identities file (TOML, reloaded on change and on SIGHUP):

    tls_allowed_dn_list = ["O=virtmesh,CN=admin", "C=GB,O=Example,CN=*"]
    [tls_dn_groups]                       # DN glob -> groups of the identities it matches
    "O=virtmesh,CN=admin" = ["admin"]
    [[token]]
    name = "ci"                           # identity name
    groups = ["readonly"]
    sha256 = "<hex digest of the token>"  # never the token itself
    revoked = false

Tokens are 256-bit random strings, so one SHA-256 makes the stored digest
useless to a reader of the file (no dictionary to try); a slow password hash
would only add work to every call. Digests are compared with hmac.compare_digest
against every entry, so timing tells nothing about which one nearly matched.
A file that cannot be read or parsed admits nobody (fail closed) until fixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.config import file_stamp
from gateway.identity import AuthenticationError, Identity
from gateway.pki import ensure_dev_pki
from services.common import metrics

log = logging.getLogger(__name__)

#: admitted when there is no identities file: the development admin certificate
#: (gateway/pki.py), so that a gateway started on a dev PKI alone works.
DEV_ADMIN_DN = "O=virtmesh,CN=admin"
BEARER = "bearer "


class Refused(AuthenticationError):
    """AuthenticationError with a reason for the auth failure metric (its label)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def libvirt_dn(name: x509.Name) -> str:
    """The subject in libvirt's tls_allowed_dn_list form: RDNs in certificate order,
    e.g. "C=GB,O=Example,CN=alice" (RFC 4514 writes them the other way round)."""
    return ",".join(rdn.rfc4514_string() for rdn in name.rdns)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Token:
    name: str
    groups: frozenset[str]
    sha256: str
    revoked: bool = False


@dataclasses.dataclass(frozen=True)
class Identities:
    """The parsed identities file."""

    allowed_dns: tuple[str, ...] = ()
    dn_groups: tuple[tuple[str, frozenset[str]], ...] = ()
    tokens: tuple[Token, ...] = ()

    def certificate_identity(self, dn: str) -> frozenset[str] | None:
        """Groups of an admitted DN, or None when no glob of the allowed list matches."""
        if not any(fnmatch.fnmatchcase(dn, glob) for glob in self.allowed_dns):
            return None
        return frozenset().union(*(groups for glob, groups in self.dn_groups
                                   if fnmatch.fnmatchcase(dn, glob)))

    def token(self, token: str) -> Token | None:
        digest = token_digest(token)
        found = None
        for entry in self.tokens:  # no early exit: the same work whichever entry matches
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found


DEV_IDENTITIES = Identities((DEV_ADMIN_DN,), ((DEV_ADMIN_DN, frozenset({"admin"})),))


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item
                                              for item in value):
        raise ValueError(f"{what}: expected a list of non-empty strings")
    return tuple(value)


def parse_identities(data: dict[str, Any]) -> Identities:
    """Raises ValueError naming the bad entry."""
    unknown = set(data) - {"tls_allowed_dn_list", "tls_dn_groups", "token"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    allowed = _strings(data.get("tls_allowed_dn_list", []), "tls_allowed_dn_list")
    dn_groups = data.get("tls_dn_groups", {})
    if not isinstance(dn_groups, dict):
        raise ValueError("tls_dn_groups: expected a table of DN glob = [groups]")
    groups = tuple((glob, frozenset(_strings(value, f"tls_dn_groups.{glob!r}")))
                   for glob, value in dn_groups.items())
    tokens: list[Token] = []
    entries = data.get("token", [])
    if not isinstance(entries, list):
        raise ValueError("token: expected [[token]] tables")
    for number, entry in enumerate(entries, 1):
        where = f"token #{number}"
        if not isinstance(entry, dict) or set(entry) - {"name", "groups", "sha256", "revoked"}:
            raise ValueError(f"{where}: only name, groups, sha256 and revoked are allowed")
        name, digest = entry.get("name"), entry.get("sha256")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name must be a non-empty string")
        if not isinstance(digest, str) or len(digest) != 64 or \
                set(digest) - set("0123456789abcdef"):
            raise ValueError(f"{where} ({name}): sha256 must be 64 lowercase hex digits")
        revoked = entry.get("revoked", False)
        if not isinstance(revoked, bool):
            raise ValueError(f"{where} ({name}): revoked must be true or false")
        if any(token.sha256 == digest for token in tokens):
            # else a revoked entry and a live copy of it would race for the token
            raise ValueError(f"{where} ({name}): the same token as an earlier entry")
        tokens.append(Token(name, frozenset(_strings(entry.get("groups", []),
                                                     f"{where} ({name}): groups")),
                            digest, revoked))
    return Identities(allowed, groups, tuple(tokens))


def load_identities(path: Path, dev_fallback: bool = False) -> Identities:
    """The file's identities. Without the file: DEV_IDENTITIES with ``dev_fallback``
    (the gateway trusts the development CA), else nobody. Raises ValueError."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return DEV_IDENTITIES if dev_fallback else Identities()
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None
    try:
        return parse_identities(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


@functools.lru_cache(maxsize=256)
def _certificate_facts(pem: bytes) -> tuple[str, bool]:
    """(DN, has the clientAuth extended key usage) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return libvirt_dn(cert.subject), False
    return libvirt_dn(cert.subject), ExtendedKeyUsageOID.CLIENT_AUTH in usages


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer`` header; AuthenticationError for another
    scheme or more than one header; None without one."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Refused("more than one authorization header", "bad_header")
    value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
    if not value.lower().startswith(BEARER) or not value[len(BEARER):].strip():
        raise Refused("authorization header: expected `Bearer <token>`",
                                  "bad_header")
    return str(value[len(BEARER):].strip())


class Authenticator:
    """Finds the caller of a gateway call; reloads the identities file when it changes."""

    def __init__(self, identities_file: Path, dev_fallback: bool = False) -> None:
        self.path = identities_file
        #: without the file, admit the development admin (only with the development CA)
        self.dev_fallback = dev_fallback
        self._mtime: int | None = None
        self.identities = Identities()
        self.reload(force=True)

    def reload(self, force: bool = False) -> str:
        """Read the file again if it changed (or ``force``); a bad file admits nobody.
        Returns "" or why the file is not used."""
        mtime = file_stamp(self.path)
        if not force and mtime == self._mtime:
            return ""
        self._mtime = mtime
        try:
            self.identities = load_identities(self.path, self.dev_fallback)
        except ValueError as error:
            log.error("identities file unusable, admitting nobody until it is fixed: %s", error)
            self.identities = Identities()
            return f"unusable, admitting nobody until it is fixed: {error}"
        if mtime is None and self.dev_fallback:
            log.warning("no identities file %s: the CA is the development CA, so admitting "
                        "only the development admin certificate %r", self.path, DEV_ADMIN_DN)
        elif mtime is None:
            log.error("no identities file %s: admitting nobody (a missing or mis-mounted "
                      "file must not let anyone in)", self.path)
        else:
            log.info("identities from %s: %d allowed DN globs, %d tokens (%d revoked)",
                     self.path, len(self.identities.allowed_dns), len(self.identities.tokens),
                     sum(token.revoked for token in self.identities.tokens))
        return ""

    def authenticate(self, context: grpc.aio.ServicerContext, metadata: Any = None,
                     peer: str | None = None) -> Identity:
        """The caller of this call; raises AuthenticationError (-> UNAUTHENTICATED).
        ``metadata`` and ``peer``: the call's, when the caller has read them already."""
        if peer is None:
            peer = context.peer()
        try:
            return self._authenticate(context, peer, context.invocation_metadata()
                                      if metadata is None else metadata)
        except AuthenticationError as error:
            metrics.AUTH_FAILURES.labels(getattr(error, "reason", "other")).inc()
            log.warning("unauthenticated call from %s: %s", peer, error)
            raise

    def _authenticate(self, context: grpc.aio.ServicerContext, peer: str,
                      metadata: Any) -> Identity:
        auth = context.auth_context()
        if auth.get("transport_security_type") != [b"ssl"]:
            raise Refused("the gateway accepts calls over TLS only", "no_tls")
        token = bearer_token(metadata)
        if token is not None:
            return self._token_identity(token, peer)
        pems = list(auth.get("x509_pem_cert") or ())
        if not pems:
            raise Refused("no client certificate and no bearer token", "no_credentials")
        dn, client_auth = _certificate_facts(pems[0])
        if not client_auth:
            raise Refused(f"client certificate {dn!r} is not for client authentication "
                          "(no clientAuth extended key usage)", "certificate_usage")
        groups = self.identities.certificate_identity(dn)
        if groups is None:
            raise Refused(f"client certificate {dn!r} is not in tls_allowed_dn_list",
                          "dn_not_allowed")
        return Identity(dn, groups, "certificate", peer)

    def _token_identity(self, token: str, peer: str) -> Identity:
        entry = self.identities.token(token)
        if entry is None:
            raise Refused("unknown bearer token", "unknown_token")
        if entry.revoked:
            raise Refused(f"the bearer token of {entry.name!r} is revoked",
                          "revoked_token")
        return Identity(entry.name, entry.groups, "token", peer)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def token_entry(name: str, groups: Iterable[str], token: str) -> str:
    """A [[token]] table for the identities file (TOML strings are JSON-compatible here)."""
    return (f"\n[[token]]\nname = {json.dumps(name)}\n"
            f"groups = {json.dumps(sorted(groups))}\nsha256 = \"{token_digest(token)}\"\n"
            "revoked = false\n")


def read_identities_data(path: Path) -> dict[str, Any]:
    """The identities file as TOML data, checked to be a valid identities file; {} when
    it does not exist. Raises ValueError naming the problem."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None
    try:
        parse_identities(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return data


def dump_identities(data: dict[str, Any], header: str = "") -> str:
    """TOML text of identities ``data`` (keys as parse_identities takes them); TOML
    basic strings take JSON's escapes, so json.dumps writes every string."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append("tls_allowed_dn_list = ["
                 + ", ".join(map(json.dumps, data.get("tls_allowed_dn_list", []))) + "]")
    lines += ["", "[tls_dn_groups]"]
    lines += [f"{json.dumps(glob)} = [{', '.join(map(json.dumps, groups))}]"
              for glob, groups in data.get("tls_dn_groups", {}).items()]
    for entry in data.get("token", []):
        lines += ["", "[[token]]"] + [f"{key} = {json.dumps(value)}"
                                      for key, value in entry.items()]
    return "\n".join(lines) + "\n"


def save_identities(path: Path, data: dict[str, Any], header: str = "") -> None:
    """Write ``data`` (0600, atomically) once it reads back as a valid identities file;
    ValueError and nothing written otherwise."""
    text = dump_identities(data, header)
    if tomllib.loads(text) != data:
        raise ValueError("the identities do not survive a round trip through TOML")
    parse_identities(data)
    write_private(path, text)


def admit_dn(data: dict[str, Any], dn: str, groups: Iterable[str]) -> None:
    """Let certificate subject ``dn`` in with ``groups`` (exactly that DN: no glob)."""
    if any(char in dn for char in "*?["):
        raise ValueError(f"{dn!r}: a DN with glob characters would admit more than one "
                         "certificate")
    allowed = data.setdefault("tls_allowed_dn_list", [])
    if dn not in allowed:
        allowed.append(dn)
    data.setdefault("tls_dn_groups", {})[dn] = sorted(groups)


def add_token(data: dict[str, Any], name: str, groups: Iterable[str], token: str) -> None:
    data.setdefault("token", []).append({"name": name, "groups": sorted(groups),
                                         "sha256": token_digest(token), "revoked": False})


#: the development identities: name -> groups. Each has a token in
#: <state_dir>/tokens/<name>.token and a certificate (pki/client.crt is the admin's).
DEV_TOKENS = {"admin": ("admin",), "readonly": ("readonly",)}
DEV_CERTIFICATES = {"client": "admin", "readonly": "readonly"}
DEV_HEADER = "Who may call the gateway (see gateway/authn.py). Written by make run;\n" \
             "edit it, or use virtmesh-admin (gateway/admin.py)."


def dev_dn(name: str) -> str:
    return f"O=virtmesh,CN={name}"


def ensure_dev_identities(state_dir: Path) -> Path:
    """``make run``'s identities: the dev PKI, whose client certificate (pki/client.*) is
    the admin's and pki/readonly.* the read-only identity's; tokens in
    <state_dir>/tokens/{admin,readonly}.token; and the gateway's identities file
    admitting them. What is missing is created. A new file is written whole; in one
    that exists, only what was created is added (other entries, from an editor or
    virtmesh-admin, stay)."""
    pki_dir = state_dir / "pki"
    new_certificates = [stem for stem in DEV_CERTIFICATES
                        if not (pki_dir / f"{stem}.crt").exists()]
    ensure_dev_pki(pki_dir, tuple(DEV_CERTIFICATES))
    new_tokens = {}
    for name in DEV_TOKENS:
        path = state_dir / "tokens" / f"{name}.token"
        if not path.exists():
            write_private(path, new_token() + "\n")
            new_tokens[name] = path.read_text().strip()
    identities = state_dir / "gateway" / "identities.toml"
    if identities.exists() and not new_certificates and not new_tokens:
        return identities  # left alone: it may have been edited
    data = read_identities_data(identities) if identities.exists() else {}
    if not data:  # new: every dev identity
        new_certificates = list(DEV_CERTIFICATES)
        new_tokens = {name: (state_dir / "tokens" / f"{name}.token").read_text().strip()
                      for name in DEV_TOKENS}
    for stem in new_certificates:
        name = DEV_CERTIFICATES[stem]
        admit_dn(data, dev_dn(name), DEV_TOKENS[name])
    # a new token file replaces the entries of its name: the old token is gone
    data["token"] = [entry for entry in data.get("token", []) if entry["name"] not in new_tokens]
    for name, token in new_tokens.items():
        add_token(data, name, DEV_TOKENS[name], token)
    save_identities(identities, data, DEV_HEADER)
    return identities


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.authn",
        description="add a bearer token to the gateway's identities file; prints the token")
    parser.add_argument("identities_file", type=Path)
    parser.add_argument("name", help="identity name (as policies and audit logs see it)")
    parser.add_argument("--group", action="append", default=[], dest="groups",
                        help="group or role of the identity; repeat for several")
    args = parser.parse_args(argv)
    token = new_token()
    try:
        existing = args.identities_file.read_text()
    except FileNotFoundError:
        existing = ""
    except (OSError, UnicodeDecodeError) as error:
        parser.error(str(error))
    text = existing + token_entry(args.name, args.groups, token)
    try:  # the file as the gateway will read it, or nothing written
        parse_identities(tomllib.loads(text))
    except (ValueError, tomllib.TOMLDecodeError) as error:
        parser.error(f"{args.identities_file}: {error}")
    write_private(args.identities_file, text)
    print(token)


if __name__ == "__main__":
    main()
