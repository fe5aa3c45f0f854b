"""What a remote homeserver sees at one resolved address: TLS, the signed server keys, the version."""

from __future__ import annotations

import hashlib
import json
import ssl
import time

from cryptography import x509
from unpaddedbase64 import encode_base64

from federate.checker.resolution import Target
from federate.checker.http import Response, check_ed25519_key, ed25519_keys, https_request

KEY_PATH = "/_matrix/key/v2/server"
VERSION_PATH = "/_matrix/federation/v1/version"


class Connector:
    """GETs on one target; after a certificate failure it keeps looking without verification,
    so the report can still say what the certificate and the keys are."""

    def __init__(self, target: Target, ca_file: str | None, timeout: float):
        self.target, self.ca_file, self.timeout = target, ca_file, timeout
        self.verify = True
        self.certificate_error = ""

    def get(self, path: str) -> Response:
        try:
            return self._get(path)
        except ssl.SSLCertVerificationError as error:
            if not self.verify:
                raise
            self.verify = False
            self.certificate_error = (f"certificate is not valid for {self.target.tls_name}: "
                                      f"{(error.verify_message or str(error)).rstrip('.')}")
            return self._get(path)

    def _get(self, path: str) -> Response:
        return https_request(self.target.address, self.target.port, path, tls_name=self.target.tls_name,
                             host_header=self.target.host_header, ca_file=self.ca_file,
                             timeout=self.timeout, verify=self.verify)


def check_connection(target: Target, server_name: str, ca_file: str | None, timeout: float) -> dict:
    """The ConnectionReport for one address; OSError when it cannot be reached at all."""
    connector = Connector(target, ca_file, timeout)
    reply = connector.get(KEY_PATH)
    report = {"Certificates": certificate_summaries(reply.certificate_chain),
              "Cipher": {"Version": reply.tls_version, "CipherSuite": reply.cipher},
              "Errors": [], "Keys": None, "Checks": None, "Version": {}}
    if connector.certificate_error:
        report["Errors"].append({"Message": connector.certificate_error})
    report["Keys"] = _key_document(reply, report["Errors"])
    report["Checks"] = key_checks(report["Keys"], server_name, valid_certificates=connector.verify)
    report["Version"] = server_version(connector)
    return report


def _key_document(reply: Response, errors: list) -> dict | None:
    if reply.status != 200:
        errors.append({"Message": f"GET {KEY_PATH} answered HTTP {reply.status}", "Status": reply.status})
        return None
    try:
        document = json.loads(reply.body)
    except ValueError as error:
        errors.append({"Message": f"GET {KEY_PATH} is not JSON: {error}"})
        return None
    if not isinstance(document, dict):
        errors.append({"Message": f"GET {KEY_PATH} is not a JSON object"})
        return None
    return document


def key_checks(document: dict | None, server_name: str, valid_certificates: bool,
               now_ms: int | None = None) -> dict:
    """The federation tester's Checks of a key document (signatures checked for the asked name)."""
    document = document or {}
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    valid_until = document.get("valid_until_ts")
    checks = {
        "MatchingServerName": document.get("server_name") == server_name,
        "FutureValidUntilTS": isinstance(valid_until, int) and valid_until > now_ms,
        "HasEd25519Key": bool(ed25519_keys(document)),
        "Ed25519Checks": {},
        "ValidCertificates": valid_certificates,
    }
    for key_id, entry in ed25519_keys(document).items():
        result = check_ed25519_key(document, server_name, key_id, entry)
        checks["Ed25519Checks"][key_id] = {"ValidEd25519": result.valid_key,
                                           "MatchingSignature": result.matching_signature}
    checks["AllEd25519ChecksOK"] = checks["HasEd25519Key"] and all(
        all(result.values()) for result in checks["Ed25519Checks"].values())
    checks["AllChecksOK"] = all(checks[name] for name in (
        "MatchingServerName", "FutureValidUntilTS", "HasEd25519Key", "AllEd25519ChecksOK", "ValidCertificates"))
    return checks


def server_version(connector: Connector) -> dict:
    """{name, version} from /_matrix/federation/v1/version, or {error}."""
    try:
        reply = connector.get(VERSION_PATH)
        if reply.status != 200:
            return {"error": f"GET {VERSION_PATH} answered HTTP {reply.status}"}
        server = json.loads(reply.body)["server"]
        return {"name": str(server.get("name", "")), "version": str(server.get("version", ""))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return {"error": f"GET {VERSION_PATH}: {type(error).__name__}: {error}"}


def certificate_summaries(chain: list[bytes]) -> list[dict]:
    return [certificate_summary(der) for der in chain]


def certificate_summary(der: bytes) -> dict:
    certificate = x509.load_der_x509_certificate(der)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = names.get_values_for_type(x509.DNSName) + [
            str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns_names = []
    return {"SubjectCommonName": _common_name(certificate.subject),
            "IssuerCommonName": _common_name(certificate.issuer),
            "SHA256Fingerprint": encode_base64(hashlib.sha256(der).digest()),
            "DNSNames": dns_names}


def _common_name(name: x509.Name) -> str:
    attributes = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else ""
