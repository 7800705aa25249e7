"""A run's own certificate authority, for putting egress secrets into HTTPS requests.

Only runs with ``egress_secrets`` get one, and only for their secrets' hosts: the proxy ends
the sandbox's TLS for those hosts with a certificate this CA signs (made on first use, kept for
the run), puts the value in, and opens its own TLS to the real host, verified against the
system's CAs (and ``PYFLUE_SANDBOX_EGRESS_CA_FILE``). The CA's key never leaves the pyflue
process and dies with the run; the container trusts the CA through a bundle pyflue copies in
(the host's CAs plus this one), named by the usual variables (:data:`TRUST_ENV`).
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BUNDLE_PATH = "/workspace/.pyflue/egress-ca.pem"  # in the run's own volume
# What curl, git, pip, requests, openssl-based tools and node read for their trust.
TRUST_ENV = ("SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO",
             "PIP_CERT", "NODE_EXTRA_CA_CERTS")
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_DAY = datetime.timedelta(days=1)


class RunCA:
    """One run's CA: signs a leaf per host; :meth:`server_context` serves it to the sandbox."""

    def __init__(self, run_id: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                             f"pyflue egress CA {run_id[-26:]}")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 2 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256()))
        self._contexts: dict[str, ssl.SSLContext] = {}

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def bundle(self, system: Path = SYSTEM_BUNDLE) -> bytes:
        """The host's CAs (when it has the usual bundle) and this CA: what the sandbox trusts."""
        try:
            base = system.read_bytes()
        except OSError:
            base = b""
        return base + b"\n" + self.pem

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for ``host``, HTTP/1.1 only."""
        if host not in self._contexts:
            self._contexts[host] = self._context(host)
        return self._contexts[host]

    def _context(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 2 * _DAY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols(["http/1.1"])

        def same_name(_: object, name: str | None, __: object) -> int | None:
            # Domain fronting: TLS for another name inside a CONNECT to this one.
            return None if name == host else ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

        context.sni_callback = same_name
        # load_cert_chain reads files only: a private temporary file, removed at once.
        with tempfile.NamedTemporaryFile(suffix=".pem") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
            f.write(cert.public_bytes(serialization.Encoding.PEM))
            f.flush()
            context.load_cert_chain(f.name)
        return context


def client_context(extra_ca: Path | None) -> ssl.SSLContext:
    """The proxy's TLS to the real host: the system's CAs, plus ``extra_ca`` when given."""
    context = ssl.create_default_context()
    if extra_ca is not None:
        context.load_verify_locations(cafile=str(extra_ca))
    context.set_alpn_protocols(["http/1.1"])
    return context
