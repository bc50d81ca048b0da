"""virtmesh-admin: per-person credentials in the gateway's identities file.

Issues client certificates from the CA (the subject DN and its groups go into the
identities file), creates and revokes bearer tokens, and lists who may call. The
gateway reloads the identities file when it changes (``reload_interval``), so
what this writes takes effect without a restart: an issued identity is admitted,
a revoked one refused, within seconds.

It finds the files as the gateway does (flag > ``VIRTMESH_*`` > ``--config`` file's
``[services.gateway]`` > default): the identities file ``identities_file``
(default ``<state_dir>/gateway/identities.toml``) and the CA ``tls_ca`` (default
``<state_dir>/pki/ca.crt``); the CA key is ``--ca-key`` or the CA certificate's
path with ``.key``. Every change is checked to make a valid identities file
before it is written (0600, atomically); a file that does not parse is never
touched. Comments in the file are not kept.

Certificates are identified by their DN; there is no CRL: ``revoke-cert`` takes
the DN off ``tls_allowed_dn_list`` (and its groups), which refuses it at once.
Tokens are printed once; only their SHA-256 digest is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import authn, pki
from gateway import config as gateway_config
from services.common.config import ConfigError

HEADER = "Who may call the gateway (see gateway/authn.py). Edited by virtmesh-admin."


class AdminError(Exception):
    """What the command cannot do; one line, exit status 1."""


def _files(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The identities file, the CA certificate and the CA key, found as the gateway
    finds them."""
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in
            (("config", args.config), ("state_dir", args.state_dir),
             ("identities_file", args.identities_file), ("tls_ca", args.tls_ca))
            if value]
    try:
        config = gateway_config.load(argv)
    except ConfigError as error:
        raise AdminError(str(error)) from None
    ca_key = Path(args.ca_key) if args.ca_key else config.ca_file.with_suffix(".key")
    return config.identities_path, config.ca_file, ca_key


def _load(path: Path) -> dict[str, Any]:
    try:
        return authn.read_identities_data(path)
    except ValueError as error:
        raise AdminError(f"not changing an identities file that does not load: {error}") \
            from None


def _save(path: Path, data: dict[str, Any]) -> None:
    try:
        authn.save_identities(path, data, HEADER)
    except ValueError as error:
        raise AdminError(f"nothing written: {error}") from None


def _groups(groups: Sequence[str]) -> list[str]:
    if not groups or not all(groups):
        raise AdminError("give each identity at least one group (--group NAME), none empty")
    return sorted(set(groups))


def subject(name: str, organization: str) -> x509.Name:
    """The certificate subject of ``name``: O=<organization>,CN=<name>."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, name)])


def issue_cert(args: argparse.Namespace) -> None:
    identities, ca_cert_path, ca_key_path = _files(args)
    groups = _groups(args.groups)
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    except (OSError, ValueError) as error:
        raise AdminError(f"cannot read the CA ({ca_cert_path}, {ca_key_path}): {error}") \
            from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or \
            ca_key.public_key() != ca_cert.public_key():
        raise AdminError(f"{ca_key_path} is not the (EC) key of {ca_cert_path}")
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise AdminError(f"{args.name!r}: a name is also a file name here: no '/', no "
                         "leading '.'")
    name = subject(args.name, args.organization)
    dn = authn.libvirt_dn(name)
    data = _load(identities)
    try:
        authn.admit_dn(data, dn, groups)
    except ValueError as error:
        raise AdminError(str(error)) from None
    out = Path(args.out)
    crt, key_path = out / f"{args.name}.crt", out / f"{args.name}.key"
    if not args.force and (crt.exists() or key_path.exists()):
        raise AdminError(f"{crt} or {key_path} exists; --force replaces them")
    key = pki.new_key()
    cert = pki.issue(name, key, ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                     days=args.days)
    pki.write_pair(out, args.name, cert, key)
    _save(identities, data)
    print(f"issued {dn} (groups {', '.join(groups)}), valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%d}: {crt} {key_path}")


def revoke_cert(args: argparse.Namespace) -> None:
    identities, _, _ = _files(args)
    dn = args.dn if "=" in args.dn else authn.libvirt_dn(subject(args.dn, args.organization))
    data = _load(identities)
    allowed = data.get("tls_allowed_dn_list", [])
    if dn not in allowed:
        raise AdminError(f"{dn!r} is not in tls_allowed_dn_list")
    allowed.remove(dn)
    data.get("tls_dn_groups", {}).pop(dn, None)
    _save(identities, data)
    still = authn.parse_identities(data).certificate_identity(dn)
    print(f"revoked {dn}" + (f"; a glob still admits it (groups {sorted(still)})"
                             if still is not None else ""))


def add_token(args: argparse.Namespace) -> None:
    identities, _, _ = _files(args)
    groups = _groups(args.groups)
    if not args.name:
        raise AdminError("the identity name must not be empty")
    data = _load(identities)
    token = authn.new_token()
    authn.add_token(data, args.name, groups, token)
    if args.out:
        authn.write_private(Path(args.out), token + "\n")
    _save(identities, data)
    print(f"token of {args.name} written to {args.out}" if args.out else token)


def revoke_token(args: argparse.Namespace) -> None:
    identities, _, _ = _files(args)
    data = _load(identities)
    live = [entry for entry in data.get("token", []) if entry["name"] == args.name
            and not entry.get("revoked", False)
            and (not args.sha256 or entry["sha256"] == args.sha256)]
    if not live:
        raise AdminError(f"no live token of {args.name!r}")
    for entry in live:
        entry["revoked"] = True
    _save(identities, data)
    print(f"revoked {len(live)} token{'s' if len(live) > 1 else ''} of {args.name}")


def list_identities(args: argparse.Namespace) -> None:
    identities, _, _ = _files(args)
    data = _load(identities)
    groups = data.get("tls_dn_groups", {})
    rows = [{"kind": "certificate", "name": dn, "groups": sorted(groups.get(dn, [])),
             "status": "allowed"} for dn in data.get("tls_allowed_dn_list", [])]
    rows += [{"kind": "token", "name": entry["name"], "groups": sorted(entry.get("groups", [])),
              "status": "revoked" if entry.get("revoked") else "active",
              "sha256": entry["sha256"][:12]} for entry in data.get("token", [])]
    if args.json:
        print(json.dumps({"identities_file": str(identities), "identities": rows}, indent=2))
        return
    table = [("KIND", "NAME", "GROUPS", "STATUS")] + [
        (row["kind"], row["name"], ",".join(row["groups"]) or "-", row["status"])
        for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[3])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virtmesh-admin", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--config", help="the gateway's TOML config file (env VIRTMESH_CONFIG)")
    parser.add_argument("--state-dir", help="the gateway's state directory (env "
                        "VIRTMESH_STATE_DIR; default ./.virtmesh)")
    parser.add_argument("--identities-file", help="default: the gateway's (env "
                        "VIRTMESH_IDENTITIES_FILE; <state_dir>/gateway/identities.toml)")
    parser.add_argument("--tls-ca", help="CA certificate (env VIRTMESH_TLS_CA; default "
                        "<state_dir>/pki/ca.crt)")
    parser.add_argument("--ca-key", help="CA key (default: the CA certificate's path, .key)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, handler: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(handler=handler)
        return sub

    def naming(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--group", action="append", default=[], dest="groups",
                         metavar="GROUP", help="group or role (policy), repeatable")

    sub = command("issue-cert", "issue a client certificate for NAME (DN O=ORG,CN=NAME) "
                  "and admit it with its groups", issue_cert)
    sub.add_argument("name")
    naming(sub)
    sub.add_argument("--organization", default="virtmesh", help="O= of the DN")
    sub.add_argument("--days", type=int, default=365, help="validity (default 365)")
    sub.add_argument("--out", default=".", help="directory for NAME.crt and NAME.key")
    sub.add_argument("--force", action="store_true", help="replace NAME.crt and NAME.key")
    sub = command("revoke-cert", "refuse a certificate: take its DN (or O=ORG,CN=NAME) off "
                  "the allowed list", revoke_cert)
    sub.add_argument("dn", metavar="DN|NAME")
    sub.add_argument("--organization", default="virtmesh", help="O= of the DN of a NAME")
    sub = command("add-token", "create a bearer token for NAME; prints it once", add_token)
    sub.add_argument("name")
    naming(sub)
    sub.add_argument("--out", help="write the token to this file (0600) instead of stdout")
    sub = command("revoke-token", "revoke every live token of NAME", revoke_token)
    sub.add_argument("name")
    sub.add_argument("--sha256", help="only the token with this digest")
    sub = command("list", "list certificate DNs and tokens", list_identities)
    sub.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except AdminError as error:
        print(f"virtmesh-admin: {error}", file=sys.stderr)
        return 1
    return 0


def command() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    command()
