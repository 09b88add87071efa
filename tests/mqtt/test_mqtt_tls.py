"""TLS material: a CA, a broker certificate for 127.0.0.1/localhost, one client certificate per thing."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgekit.errors import ConfigError
from edgekit.mqtt.tls import SERVICE_IDENTITY, TlsMaterial


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_create_issues_ca_server_service_and_devices(tmp_path: Path) -> None:
    tls = TlsMaterial.create(tmp_path / "tls", ["dev-1", "line3:cam_2"])

    server = _cert(tls.server.cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    device = _cert(tls.device("dev-1").cert)
    assert _cn(device) == "dev-1"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    device.verify_directly_issued_by(_cert(tls.ca_cert))
    assert _cn(_cert(tls.service.cert)) == SERVICE_IDENTITY
    assert tls.things() == ["dev-1", "line3:cam_2"]

    # the files load into ssl contexts the way the broker and the client use them
    client_ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    client_ctx.load_cert_chain(str(tls.device("dev-1").cert), str(tls.device("dev-1").key))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca_cert))
    server_ctx.load_cert_chain(str(tls.server.cert), str(tls.server.key))


def test_private_keys_are_0600(tmp_path: Path) -> None:
    tls = TlsMaterial.create(tmp_path / "tls", ["dev-1"])
    for key in [tmp_path / "tls" / "ca.key", tls.server.key, tls.service.key, tls.device("dev-1").key]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(tls.device("dev-1").cert.stat().st_mode) == 0o644


def test_create_is_idempotent_and_add_device_extends(tmp_path: Path) -> None:
    first = TlsMaterial.create(tmp_path / "tls", ["dev-1"])
    before = {p: p.read_bytes() for p in (tmp_path / "tls").rglob("*") if p.is_file()}
    again = TlsMaterial.create(tmp_path / "tls", ["dev-1"])
    after = {p: p.read_bytes() for p in (tmp_path / "tls").rglob("*") if p.is_file()}
    assert before == after  # same CA, same certificates, same keys

    files = again.add_device("dev-2")
    _cert(files.cert).verify_directly_issued_by(_cert(first.ca_cert))
    assert again.add_device("dev-2") == files
    assert TlsMaterial.open(tmp_path / "tls").things() == ["dev-1", "dev-2"]


def test_a_certificate_from_another_ca_is_reissued(tmp_path: Path) -> None:
    tls = TlsMaterial.create(tmp_path / "tls", ["dev-1"])
    other = TlsMaterial.create(tmp_path / "other", ["dev-1"])
    tls.device("dev-1").cert.write_bytes(other.device("dev-1").cert.read_bytes())
    TlsMaterial.create(tmp_path / "tls", ["dev-1"])
    _cert(tls.device("dev-1").cert).verify_directly_issued_by(_cert(tls.ca_cert))


def test_a_thousand_devices_each_get_their_own_certificate(tmp_path: Path) -> None:
    names = [f"dev-{i:04d}" for i in range(1000)]
    tls = TlsMaterial.create(tmp_path / "tls", names)
    assert tls.things() == names
    ca = _cert(tls.ca_cert)
    certs = [_cert(tls.device(n).cert) for n in names]
    assert [_cn(c) for c in certs] == names
    assert len({c.serial_number for c in certs}) == 1000
    for cert in certs[::97]:
        cert.verify_directly_issued_by(ca)  # raises when the CA did not sign it


@pytest.mark.parametrize("name", ["a/b", "dev+1", "dev#", "", "x" * 129, "dev 1"])
def test_bad_thing_names_are_refused(tmp_path: Path, name: str) -> None:
    tls = TlsMaterial.create(tmp_path / "tls")
    with pytest.raises(ConfigError, match="thing name"):
        tls.add_device(name)


def test_service_identity_is_not_a_thing(tmp_path: Path) -> None:
    tls = TlsMaterial.create(tmp_path / "tls")
    with pytest.raises(ConfigError, match="fleet service"):
        tls.add_device(SERVICE_IDENTITY)
    with pytest.raises(ConfigError, match="add_device"):
        tls.device("never-added")
