"""
Writing on a connection's socket at once.  A Twisted transport's write only
buffers until the reactor's next turn finds the socket writable, which costs
that turn and two epoll_ctl calls per write; a short answer or command
almost always fits in the socket's buffer at once.  Used by the HTTP
connections (sharqd/web/site.py) and the Redis ones (sharqd/redis/connection.py).
"""

import socket

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport


def socket_of(transport):
    """The socket of a plain TCP or UNIX connection, else None (TLS
    encrypts in its own transport, which must see every byte)."""
    if not isinstance(transport, tcp.Connection) or ISSLTransport.providedBy(transport):
        return None
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else None


class DirectWriter:
    """Writes on a transport's socket while nothing waits in the transport's
    buffer.  Once the socket takes only part of a write, the rest and every
    write after it go through the transport, in order, until resume() says
    its buffer is empty again."""

    def __init__(self, transport):
        self.transport = transport
        self.socket = socket_of(transport)
        self.direct = self.socket  # None while writes go through the transport

    def write(self, data):
        sock = self.direct
        if sock is not None and not self.transport.disconnecting:
            try:
                sent = sock.send(data)
            except OSError:  # full (EAGAIN) or failing: the transport sees to it
                sent = 0
            if sent == len(data):
                return
            self.direct = None
            data = data[sent:]
        self.transport.write(data)

    def resume(self):
        """Write on the socket again (the caller knows the transport's
        buffer is empty)."""
        self.direct = self.socket
