"""
TLS for `listen : ssl:...`, in every worker and reloadable on SIGHUP.

The listening socket is a plain TCP socket; TLS wraps each connection.  So
the parent and the workers that adopt its socket wrap their connections
with the same certificate, and a SIGHUP that reloads it changes the
certificate of new connections without closing the socket.
"""

import re

from OpenSSL import SSL, crypto
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.filepath import FilePath
from zope.interface import implementer

# the keys of Twisted's `ssl:` server endpoint string that sharqd reads
SSL_KEYS = ("port", "interface", "backlog", "privateKey", "certKey",
            "extraCertChain", "dhParameters")

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                       re.DOTALL)


def parse_ssl(description):
    """`ssl:8443:privateKey=k.pem:certKey=c.pem` -> {key: value}, as Twisted
    reads it (`\\:` escapes a colon); ValueError when it cannot be used."""
    fields, current, escaped = [], "", False
    for char in description:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    if fields[0] != "ssl":
        raise ValueError("not an ssl: endpoint")
    options, positional = {}, []
    for field in fields[1:]:
        key, equals, value = field.partition("=")
        if not equals:
            positional.append(field)
        elif key not in SSL_KEYS:
            raise ValueError(f"sharqd does not support {key}= in ssl: "
                             f"(it reads {', '.join(SSL_KEYS)})")
        else:
            options[key] = value
    if positional:
        options.setdefault("port", positional.pop(0))
    if positional or "port" not in options:
        raise ValueError("give ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem")
    for key in ("port", "backlog"):
        if key in options and not options[key].isdigit():
            raise ValueError(f"{key}={options[key]} is not a number")
    options.setdefault("privateKey", "server.pem")
    options.setdefault("certKey", options["privateKey"])
    return options


def load_options(options):
    """CertificateOptions from the files named in options; ValueError
    naming the file when one cannot be used."""
    def read(key):
        try:
            with open(options[key], "rb") as f:
                return f.read()
        except OSError as e:
            raise ValueError(f"{key}={options[key]}: {e.strerror}")

    try:
        key = ssl.KeyPair.load(read("privateKey"), crypto.FILETYPE_PEM)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"privateKey={options['privateKey']}: not a PEM private key ({e})")
    try:
        cert = ssl.Certificate.loadPEM(read("certKey"))
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"certKey={options['certKey']}: not a PEM certificate ({e})")
    chain = []
    if options.get("extraCertChain"):
        pems = _PEM_CERT.findall(read("extraCertChain"))
        if not pems:
            raise ValueError(f"extraCertChain={options['extraCertChain']}: "
                             "no PEM certificate in it")
        chain = [ssl.Certificate.loadPEM(pem).original for pem in pems]
    dh = None
    if options.get("dhParameters"):
        dh = ssl.DiffieHellmanParameters.fromFile(FilePath(options["dhParameters"]))
    certificate_options = ssl.CertificateOptions(
        privateKey=key.original, certificate=cert.original,
        extraCertChain=chain or None, dhParameters=dh)
    try:
        certificate_options.getContext()  # a key that does not fit the cert fails here
    except SSL.Error as e:
        raise ValueError(f"privateKey={options['privateKey']} does not match "
                         f"certKey={options['certKey']} ({e})")
    return certificate_options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """The server side of TLS from certificate files; reload() re-reads
    them for new connections (SIGHUP)."""

    log = Logger()

    def __init__(self, options):
        self.options = options
        self.certificate = load_options(options)

    def reload(self):
        try:
            self.certificate = load_options(self.options)
        except Exception as e:
            self.log.error("TLS certificate not reloaded, keeping the one loaded "
                           "before: {why}", why=str(e))
            return
        self.log.info("TLS certificate {path} reloaded", path=self.options["certKey"])

    def serverConnectionForTLS(self, protocol):
        return SSL.Connection(self.certificate.getContext(), None)

    def wrap(self, factory):
        """A factory whose connections speak TLS, then HTTP."""
        return TLSMemoryBIOFactory(self, False, factory)

    def endpoint(self, reactor):
        """The plain TCP endpoint to listen on, before TLS."""
        interface = self.options.get("interface", "")
        kind = endpoints.TCP6ServerEndpoint if ":" in interface else \
            endpoints.TCP4ServerEndpoint
        return kind(reactor, int(self.options["port"]),
                    int(self.options.get("backlog", 1024)), interface)
