"""Certificate material for mTLS between devices, the fleet service and a local broker (made with ``cryptography``).

See docs/local-fleet.md (the broker, TLS and the client).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgekit.errors import ConfigError
from edgekit.mqtt.names import THING_NAME, check_thing_name

__all__ = ["SERVICE_IDENTITY", "THING_NAME", "TlsFiles", "TlsMaterial", "check_thing_name"]

SERVICE_IDENTITY = "edgekit-fleet-service"
"""Common name (and so MQTT user name) of the fleet service; the broker's ACL lets it read and write every topic."""

_DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_RENEW_BEFORE = dt.timedelta(days=7)


class TlsFiles(NamedTuple):
    """The three files a TLS client (or server) needs: CA bundle, own certificate, own private key."""

    ca: Path
    cert: Path
    key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a key 0600 from the first byte (never world-readable, not even briefly), then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgekit"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _new_ca(name: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed EC P-256 CA that signs certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


class TlsMaterial:
    """A CA with a broker certificate and per-identity client certificates in one folder.

    Use :meth:`create` (idempotent: it reuses the CA and every certificate still valid and signed by it)
    and :meth:`add_device`; :meth:`device` and :attr:`service` give the :class:`TlsFiles` a client connects with.
    """

    def __init__(self, folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate) -> None:
        self.folder = folder
        self._ca_key = ca_key
        self._ca_cert = ca_cert

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        folder: str | Path,
        things: Iterable[str] = (),
        *,
        hosts: Sequence[str] = _DEFAULT_HOSTS,
        days: int = 3650,
    ) -> TlsMaterial:
        """Make (or reuse) the CA, the broker certificate for ``hosts``, the service's and each thing's certificate."""
        folder = Path(folder)
        ca_crt, ca_key_path = folder / "ca.crt", folder / "ca.key"
        if ca_crt.is_file() and ca_key_path.is_file():
            material = cls.open(folder)
        else:
            key, cert = _new_ca("edgekit local CA", days)
            _write_private(ca_key_path, _key_pem(key))
            _write_public(ca_crt, _cert_pem(cert))
            material = cls(folder, key, cert)
        material._ensure_server(list(hosts), days)
        material._ensure_service_ca(days)
        material._ensure_client(SERVICE_IDENTITY, days)
        for thing in things:
            material.add_device(thing, days=days)
        return material

    @classmethod
    def open(cls, folder: str | Path) -> TlsMaterial:
        """Load the material :meth:`create` made earlier in ``folder``."""
        folder = Path(folder)
        try:
            ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
            ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"no usable CA in {folder} ({exc}); create it with TlsMaterial.create('{folder}')") from exc
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{folder / 'ca.key'} is not an EC key; delete the folder and create it again")
        return cls(folder, ca_key, ca_cert)

    # ------------------------------------------------------------------ files

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server(self) -> TlsFiles:
        """The broker's files (``cafile``, ``certfile``, ``keyfile``)."""
        return TlsFiles(self.ca_cert, self.folder / "server.crt", self.folder / "server.key")

    @property
    def service_ca_cert(self) -> Path:
        """The CA of the service identity alone: the broker's service listener trusts only certificates it signed."""
        return self.folder / "service-ca.crt"

    @property
    def service(self) -> TlsFiles:
        """The fleet service's client files (CN ``edgekit-fleet-service``, signed by the service CA)."""
        return self._client_files(SERVICE_IDENTITY)

    def device(self, thing: str) -> TlsFiles:
        """The files of a device made earlier with :meth:`add_device`."""
        files = self._client_files(check_thing_name(thing))
        if not (files.cert.is_file() and files.key.is_file()):
            raise ConfigError(
                f"no certificate for thing '{thing}' in {self.folder}; add it with TlsMaterial.add_device('{thing}')"
            )
        return files

    def things(self) -> list[str]:
        """Every thing that has a certificate (the service identity excluded), sorted."""
        clients = self.folder / "clients"
        names = {p.stem for p in clients.glob("*.crt")} if clients.is_dir() else set()
        names.discard(SERVICE_IDENTITY)
        return sorted(names)

    def add_device(self, thing: str, *, days: int = 3650) -> TlsFiles:
        """Issue (or keep, when still valid and signed by this CA) the client certificate of ``thing``."""
        check_thing_name(thing)
        if thing == SERVICE_IDENTITY:
            raise ConfigError(f"'{thing}' is the fleet service's identity; choose another thing name")
        return self._ensure_client(thing, days)

    # ------------------------------------------------------------------ issuing

    def _client_files(self, name: str) -> TlsFiles:
        clients = self.folder / "clients"
        return TlsFiles(self.ca_cert, clients / f"{name}.crt", clients / f"{name}.key")

    def _signer(self, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """The CA that signs ``cn``'s certificate: the service CA for the service identity, else the main CA."""
        if cn == SERVICE_IDENTITY:
            key = serialization.load_pem_private_key((self.folder / "service-ca.key").read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key, x509.load_pem_x509_certificate(self.service_ca_cert.read_bytes())
        return self._ca_key, self._ca_cert

    def _ensure_service_ca(self, days: int) -> None:
        key_path = self.folder / "service-ca.key"
        if key_path.is_file() and self.service_ca_cert.is_file():
            return
        key, cert = _new_ca("edgekit local service CA", days)
        _write_private(key_path, _key_pem(key))
        _write_public(self.service_ca_cert, _cert_pem(cert))

    def _still_good(self, path: Path, hosts: Sequence[str] | None = None, cn: str = "") -> bool:
        """True when ``path`` holds a certificate issued by its CA, valid for a while yet (and covering ``hosts``)."""
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            cert.verify_directly_issued_by(self._signer(cn)[1])
        except (OSError, ValueError, TypeError, InvalidSignature):
            return False
        if cert.not_valid_after_utc - _now() < _RENEW_BEFORE:
            return False
        if hosts is not None:
            try:
                present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                return False
            if not set(_san(hosts)).issubset(set(present)):
                return False
        return True

    def _issue(self, cn: str, *, server_hosts: Sequence[str] | None, days: int) -> tuple[bytes, bytes]:
        ca_key, ca_cert = self._signer(cn)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if server_hosts is not None:
            builder = builder.add_extension(_san(server_hosts), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)

    def _ensure_server(self, hosts: list[str], days: int) -> None:
        files = self.server
        if files.key.is_file() and self._still_good(files.cert, hosts):
            return
        cert, key = self._issue("localhost", server_hosts=hosts, days=days)
        _write_private(files.key, key)
        _write_public(files.cert, cert)

    def _ensure_client(self, name: str, days: int) -> TlsFiles:
        files = self._client_files(name)
        if files.key.is_file() and self._still_good(files.cert, cn=name):
            return files
        cert, key = self._issue(name, server_hosts=None, days=days)
        _write_private(files.key, key)
        _write_public(files.cert, cert)
        return files
