"""
Bearer tokens with per-type scopes (`[auth]` in the config; README,
"Security").

The tokens file holds one token a line, `NAME SHA256-HEX SCOPE[,SCOPE...]`:
the SHA-256 of each token, never the token.  A scope is `ACTION:TYPE-GLOB`;
a request needs a token with a scope for its route's action whose glob
matches the route's queue type.  Routes without a queue type (the global
metrics) need the glob `*`; routes outside the table below (`/deepstatus/`,
unknown routes) need only a valid token.

`Guard` is the one place every request passes through before any route,
the fast path included.  Tokens are compared in constant time and never
logged.
"""

import hashlib
import hmac
import re
import secrets
from fnmatch import fnmatchcase
from urllib.parse import unquote

from twisted.logger import Logger
from twisted.web.resource import Resource

from sharqd.errors import ConfigError
from sharqd.web.site import json_failure

ACTIONS = ("enqueue", "work", "read", "admin")

# first path segment -> action; for READ_OR_ADMIN a GET reads, anything
# else administers
READ_OR_ADMIN = ("deadletters", "policy")
ROUTE_ACTIONS = {
    "enqueue": "enqueue",
    "dequeue": "work", "finish": "work", "touch": "work",
    "metrics": "read", "queues": "read", "prometheus": "read",
    "interval": "admin", "deletequeue": "admin", "pause": "admin", "resume": "admin",
}
DEFAULT_TYPE = "default"  # GET /dequeue/
# the dashboard's static files hold no data (the page reads the API with
# the token a person types into it), so a browser may load them without one
STATIC = b"/dashboard/"

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,100}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_GLOB = re.compile(r"[A-Za-z0-9_*?\[\]!-]{1,100}")


class Token:
    __slots__ = ("name", "digest", "scopes")

    def __init__(self, name, digest, scopes):
        self.name = name
        self.digest = digest    # 32 bytes
        self.scopes = scopes    # ((action, glob), ...)

    def allows(self, action, queue_type):
        """May this token do action on queue_type (None: on every type)?"""
        for scope_action, glob in self.scopes:
            if scope_action not in (action, "*"):
                continue
            if glob == "*" or (queue_type is not None and fnmatchcase(queue_type, glob)):
                return True
        return False


def hash_token(token):
    """The hex SHA-256 of a token, as the tokens file holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token():
    """A fresh random token: 256 bits, URL-safe."""
    return "sharq_" + secrets.token_urlsafe(32)


def parse_scope(text):
    """`ACTION:GLOB` -> (action, glob), or ValueError saying what is wrong."""
    action, colon, glob = text.partition(":")
    if not colon:
        raise ValueError(f"scope {text!r} must be ACTION:TYPE-GLOB, e.g. enqueue:sms")
    if action not in ACTIONS + ("*",):
        raise ValueError(f"scope {text!r}: the action must be one of "
                         f"{', '.join(ACTIONS)} or *")
    if not _GLOB.fullmatch(glob):
        raise ValueError(f"scope {text!r}: the type glob must be 1-100 characters "
                         "from A-Z a-z 0-9 _ - * ? [ ] !")
    return action, glob


def parse_line(line):
    """One line of the tokens file -> Token, or ValueError."""
    fields = line.split()
    if len(fields) != 3:
        raise ValueError("expected NAME SHA256-HEX SCOPE[,SCOPE...]")
    name, digest, scopes = fields
    if not _NAME.fullmatch(name):
        raise ValueError(f"name {name!r} must be 1-100 characters from "
                         "A-Z a-z 0-9 _ . @ -")
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"token {name!r}: the hash must be 64 lowercase hex digits "
                         "(the SHA-256 of the token, not the token)")
    return Token(name, bytes.fromhex(digest),
                 tuple(parse_scope(s) for s in scopes.split(",") if s))


def parse_tokens(text):
    """The tokens file's text -> [Token]; ValueError names the line."""
    tokens, names = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            token = parse_line(line)
        except ValueError as e:
            raise ValueError(f"line {number}: {e}")
        if token.name in names:
            raise ValueError(f"line {number}: the name {token.name!r} is used twice")
        names.add(token.name)
        tokens.append(token)
    return tokens


class Tokens:
    """The tokens of a tokens file; reload() re-reads it (SIGHUP)."""

    log = Logger()

    def __init__(self, path, tokens=()):
        self.path = path
        self.tokens = list(tokens)

    @classmethod
    def from_file(cls, path):
        """Read the file; ConfigError with the reason when unusable."""
        return cls(path, _read(path))

    def reload(self):
        """Re-read the file; a bad file keeps the tokens loaded before."""
        try:
            tokens = _read(self.path)
        except ConfigError as e:
            self.log.error("Tokens file not reloaded, keeping the {n} tokens loaded "
                           "before: {why}", n=len(self.tokens), why=str(e))
            return
        self.tokens = tokens
        self.log.info("Tokens file {path} reloaded: {n} tokens",
                      path=self.path, n=len(tokens))

    def find(self, presented):
        """The Token whose hash matches, or None.  Every entry is compared,
        in constant time, so timing says nothing about which one matched."""
        digest = hashlib.sha256(presented).digest()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read tokens file: {e.strerror}")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: tokens file is not UTF-8 text")
    try:
        return parse_tokens(text)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}")


def required(method, path):
    """(action, queue type or None) a request needs; action None: any
    valid token will do."""
    # decoded as the router decodes it, so the type checked is the type served
    parts = unquote(path.decode("latin-1"), errors="replace").split("/")
    first = parts[1] if len(parts) > 1 else ""
    queue_type = parts[2] if len(parts) > 2 and parts[2] else None
    if first in READ_OR_ADMIN:
        return ("read" if method == b"GET" else "admin"), queue_type
    action = ROUTE_ACTIONS.get(first)
    if first == "dequeue" and queue_type is None:
        queue_type = DEFAULT_TYPE
    return action, queue_type


def _challenge(error):
    return b'Bearer realm="sharqd", error="%s"' % error.encode()


class Guard(Resource):
    """Answers 401/403 for requests their token does not allow; hands the
    others to the app unchanged."""

    isLeaf = True

    def __init__(self, tokens, open_routes, app_resource):
        super().__init__()
        self.tokens = tokens
        self.open_routes = frozenset(route.encode() for route in open_routes)
        self.app = app_resource

    def render(self, request):
        refusal = self.refusal(request.method, request.path, request.requestHeaders)
        if refusal is None:
            return self.app.render(request)
        status, _, message, error = refusal
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"www-authenticate", _challenge(error))
        return json_failure(message)

    def refusal(self, method, path, headers):
        """None when the request may go on, else (status, reason, message,
        error) of its 401 or 403.  Headers only: the site asks before it
        reads a body, and the route asks again."""
        if path in self.open_routes or (
                path.startswith(STATIC) and method in (b"GET", b"HEAD")):
            return None
        token = self._token(headers)
        if token is None:
            return (401, b"Unauthorized", "Missing or unknown token: send the header "
                    "`Authorization: Bearer <token>`.", "invalid_token")
        action, queue_type = required(method, path)
        if action is not None and not token.allows(action, queue_type):
            return (403, b"Forbidden", _forbidden(token, action, queue_type),
                    "insufficient_scope")
        return None

    def early_refusal(self, method, path, headers):
        """refusal() as the site's admit check: the answer's extra header
        lines instead of the error name."""
        refusal = self.refusal(method, path, headers)
        if refusal is None:
            return None
        status, reason, message, error = refusal
        return status, reason, message, b"WWW-Authenticate: %s\r\n" % _challenge(error)

    def _token(self, headers):
        header = headers.getRawHeaders(b"authorization")
        if not header:
            return None
        scheme, _, presented = header[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not presented.strip():
            return None
        return self.tokens.find(presented.strip())


def _forbidden(token, action, queue_type):
    if queue_type is None:
        return (f"Token `{token.name}` may not {action} across all queue types: "
                f"it needs the scope {action}:*.")
    return (f"Token `{token.name}` has no `{action}` scope for queue type "
            f"`{queue_type}`: it needs a scope {action}:GLOB whose glob matches "
            f"`{queue_type}`.")
