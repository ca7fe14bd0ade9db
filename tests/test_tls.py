"""
TLS on a real `twistd` process with workers = 2: a certificate chain made
by the test (root -> intermediate -> server, the intermediate sent through
extraCertChain), a client that trusts the root, one that does not, and a
certificate renewed in place and reloaded on SIGHUP.
"""

import datetime
import http.client
import ipaddress
import json
import signal
import socket
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support import Sharqd, free_port, run_twistd, shared_redis, wait_for

pytestmark = pytest.mark.slow


def _name(common):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_cert(common, issuer=None, ca=False):
    """(key, cert): signed by issuer (key, cert), or self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    signer_key, signer_name = (key, _name(common)) if issuer is None else \
        (issuer[0], issuer[1].subject)
    builder = (x509.CertificateBuilder().subject_name(_name(common))
               .issuer_name(signer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
    return key, builder.sign(signer_key, hashes.SHA256())


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


class Chain:
    """root -> intermediate -> server, written where sharqd reads them."""

    def __init__(self, directory):
        self.dir = directory
        self.root = make_cert("sharqd test root", ca=True)
        self.intermediate = make_cert("sharqd test intermediate", self.root, ca=True)
        (directory / "root.pem").write_bytes(pem(self.root[1]))
        (directory / "chain.pem").write_bytes(pem(self.intermediate[1]))
        self.renew()

    def renew(self):
        key, self.server = make_cert("127.0.0.1", self.intermediate)
        (self.dir / "key.pem").write_bytes(key_pem(key))
        (self.dir / "cert.pem").write_bytes(pem(self.server))

    def listen(self, port):
        d = self.dir
        return (f"ssl:{port}:interface=127.0.0.1:privateKey={d / 'key.pem'}:"
                f"certKey={d / 'cert.pem'}:extraCertChain={d / 'chain.pem'}")


def https(port, context, path="/"):
    """(status, JSON body, DER of the certificate the server showed)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        shown = conn.sock.getpeercert(binary_form=True)
        return response.status, json.loads(response.read()), shown
    finally:
        conn.close()


@pytest.fixture
def chain(tmp_path):
    return Chain(tmp_path)


@pytest.fixture
def tls_server(tmp_path, chain):
    port = free_port()
    server = Sharqd(str(tmp_path), shared_redis(),
                    extra_server=f"workers : 2\nlisten : {chain.listen(port)}")
    server.port = port
    server.start()
    wait_for(lambda: "[worker 2]" in server.read_log() and
             "listening" in server.read_log().split("[worker 2]", 1)[1], timeout=20)
    yield server
    server.stop()


def test_tls_with_two_workers_and_an_untrusting_client(tls_server, chain, tmp_path):
    """When sharqd serves ssl: with workers = 2, a client trusting only the
    root gets every answer over a verified chain (the intermediate comes
    from extraCertChain) from both processes; a client that does not trust
    it fails its handshake, and the server serves on."""
    trusting = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))
    for _ in range(20):  # new connections, spread over the two processes
        status, body, shown = https(tls_server.port, trusting)
        assert (status, body) == (200, {"message": "Hello, SharQ!"})
        assert shown == chain.server.public_bytes(serialization.Encoding.DER)
    assert len(subprocess.run(["pgrep", "-P", str(tls_server.process.pid)],
                              capture_output=True, text=True).stdout.split()) == 1

    untrusting = ssl.create_default_context()
    for _ in range(3):
        with pytest.raises(ssl.SSLCertVerificationError):
            https(tls_server.port, untrusting)
    with socket.create_connection(("127.0.0.1", tls_server.port)) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS at all
        plain.settimeout(10)
        assert not plain.recv(1000).startswith(b"HTTP/1.1 200")
    assert https(tls_server.port, trusting)[0] == 200


def test_certificate_reloaded_on_sighup(tls_server, chain, tmp_path):
    """When the certificate files are renewed in place and sharqd gets
    SIGHUP, every process shows the new certificate on new connections; a
    broken file on the next SIGHUP keeps the certificate in use."""
    trusting = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))
    old = https(tls_server.port, trusting)[2]
    chain.renew()
    new = chain.server.public_bytes(serialization.Encoding.DER)
    assert new != old
    tls_server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: tls_server.read_log().count("TLS certificate") >= 2)
    for _ in range(20):
        assert https(tls_server.port, trusting)[2] == new

    (tmp_path / "cert.pem").write_text("not a certificate\n")
    tls_server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: tls_server.read_log().count("TLS certificate not reloaded") >= 2)
    for _ in range(10):
        assert https(tls_server.port, trusting)[2] == new


def test_unusable_certificate_stops_startup(tmp_path, chain):
    """When the ssl: endpoint names a missing key or a certificate that
    does not fit the key, sharqd says so in one line and exits 1."""
    port = free_port()
    missing = f"ssl:{port}:interface=127.0.0.1:privateKey={tmp_path / 'nope.pem'}"
    (tmp_path / "other.pem").write_bytes(key_pem(make_cert("x")[0]))
    mismatched = (f"ssl:{port}:interface=127.0.0.1:privateKey={tmp_path / 'other.pem'}:"
                  f"certKey={tmp_path / 'cert.pem'}")
    for listen, why in ((missing, "No such file or directory"),
                        (mismatched, "does not match")):
        conf = tmp_path / "tls.conf"
        conf.write_text(f"[sharq-server]\nworkers : 2\nlisten : {listen}\n")
        result = run_twistd("-n", "--pidfile=", "sharq", "-c", str(conf))
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"sharqd: {conf}: [sharq-server] listen = ")
        assert why in lines[0]
