"""
The Lua scripts of the queue operations, in two forms made from the same
files:

- script_text(name): the text sent with EVAL for one operation:
  common.lua's definitions that it uses, then its own file.  (Redis runs a
  script's whole text on every call: each definition left out is a
  closure not made, about 0.1 µs each.)
- library_text(scripts): every operation as one Redis function library
  (Redis >= 7.0, FUNCTION LOAD / FCALL), where common.lua's functions are
  made once, when the library is loaded, instead of on every call.

Stdlib only: the benches read the scripts through these too.
"""

import hashlib
import re
from functools import cache
from importlib import resources

_DIR = resources.files(__name__)
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_FUNCTION = re.compile(rb"local\s+function\s+([A-Za-z_]\w*)")
_NAMES = re.compile(rb"local\s+([A-Za-z_][\w\s,]*?)\s*(?:=|--|$)")


def _code(text):
    """text without its comments (where a line's quotes are balanced
    before the "--"), for finding the names it uses."""
    lines = []
    for line in text.split(b"\n"):
        at = line.find(b"--")
        while at >= 0 and (line[:at].count(b"'") % 2 or line[:at].count(b'"') % 2):
            at = line.find(b"--", at + 2)
        lines.append(line if at < 0 else line[:at])
    return b"\n".join(lines)


@cache
def _chunks():
    """common.lua cut before each top-level `local`: [(names it defines,
    text, names it uses)]; the text before the first one defines nothing.
    Read once for all the scripts."""
    chunks, names, lines = [], set(), []
    for line in _DIR.joinpath("common.lua").read_bytes().split(b"\n"):
        if line.startswith(b"local"):
            chunks.append((names, b"\n".join(lines)))
            found = _FUNCTION.match(line) or _NAMES.match(line)
            names = {n.strip() for n in found.group(1).split(b",")} if found else set()
            lines = []
        lines.append(line)
    chunks.append((names, b"\n".join(lines)))
    return [(names, text, set(_WORD.findall(_code(text)))) for names, text in chunks]


def _body(name):
    return _DIR.joinpath(name + ".lua").read_bytes()


def _kept(body):
    """The indexes of common.lua's statements that body uses, directly or
    through another (all of them when a statement defines no name)."""
    needed = set(_WORD.findall(_code(body)))
    kept = []
    chunks = _chunks()
    # a statement uses only names defined before it: one pass backwards
    for i in range(len(chunks) - 1, -1, -1):
        names, _, uses = chunks[i]
        if not names or names & needed:
            kept.append(i)
            needed |= uses
    return kept[::-1]


def script_text(name, shared=True):
    """What sharqd sends for lua/<name>.lua: after common.lua's statements
    that it uses, unless shared is False."""
    body = _body(name)
    if not shared:
        return body
    chunks = _chunks()
    return b"\n".join(chunks[i][1] for i in _kept(body)) + b"\n" + body


# ---- the function library

_LOCAL = re.compile(rb"local\s+(.*?)\s*(?:=\s*(.*))?$", re.S)


@cache
def _split():
    """common.lua's statements as a library needs them: [(library-level
    text, per-call text or None)].  A `local function` is made once, at
    library level.  Any other `local names = expr` (key names, NOW, the
    per-call caches and flags) is declared at library level and assigned
    afresh at the start of every call that uses it, so nothing of one
    call is seen by the next; a `local name` without a value is set to
    nil.  The functions read them as upvalues, as in the EVAL text."""
    parts = []
    for names, text, _ in _chunks():
        code = _code(text).strip()
        for line in code.split(b"\n"):
            if line[:1].strip() and not line.startswith((b"local", b"end", b"}", b")")):
                # such a statement would run once, at load, not per call
                raise ValueError(f"common.lua: a top-level statement that is not a "
                                 f"`local`: {line.decode()!r}")
        if not names or _FUNCTION.match(code):
            parts.append((text, None))
            continue
        found = _LOCAL.match(code)
        declared, value = found.group(1), found.group(2)
        if value is None:
            value = b", ".join(b"nil" for _ in names)
        parts.append((b"local " + declared, declared + b" = " + value))
    return parts


def library_text(scripts, name_format="sharqd_{hash}"):
    """
    (library name, its text for FUNCTION LOAD, {script: function name})
    for scripts, a list of (script name, shared, flags): each lua/<name>.lua
    becomes one registered function whose callback first assigns the
    per-call names of common.lua it uses (see _split), then runs the
    file's text; shared False: the file alone.  flags: Redis function
    flags ("allow-oom", "no-writes").  The library's and the functions'
    names carry a hash of the text, so that two sharqd versions on one
    Redis each call their own code.
    """
    split = _split()
    lines = [b"#!lua name=@LIB@", b"-- generated by sharqd/queue/lua/__init__.py "
             b"(library_text) from common.lua and the scripts beside it"]
    lines += [top for top, _ in split]
    for script, shared, flags in scripts:
        body = _body(script)
        start = [split[i][1] for i in _kept(body) if split[i][1]] if shared else []
        lines.append(b"redis.register_function{function_name='@LIB@_%s', "
                     b"callback=function(KEYS, ARGV)" % script.encode())
        lines += start + [body.rstrip(b"\n")]
        lines.append(b"end, flags={%s}}" % b", ".join(b"'%s'" % f.encode() for f in flags))
    text = b"\n".join(lines) + b"\n"
    name = name_format.format(hash=hashlib.sha1(text).hexdigest()[:8])
    functions = {script: f"{name}_{script}" for script, _, _ in scripts}
    return name, text.replace(b"@LIB@", name.encode()), functions


# Every script, whether it starts with common.lua's prelude, and its Redis
# function flags.  Under maxmemory (noeviction) a function without flags is
# refused before it runs, as an EVAL script was at its first write: what
# adds jobs or settings (enqueue, interval) answers 503 while Redis is full.
# allow-oom: what drains or frees (dequeue, finish, requeue, delete, the
# requeue lock and index, a policy's resume) keeps working, as it did.
# no-writes: the read-only figures, which read under any memory state.
_DRAINS = ("allow-oom",)
_READS = ("no-writes",)
SCRIPT_FLAGS = {  # name: (shared, flags)
    "enqueue": (True, ()), "enqueuebatch": (True, ()), "interval": (True, ()),
    "dequeue": (True, _DRAINS), "dequeuebatch": (True, _DRAINS),
    "finish": (True, _DRAINS), "finishbatch": (True, _DRAINS), "touch": (True, _DRAINS),
    "requeue": (True, _DRAINS), "deletequeue": (True, _DRAINS),
    "deadletters": (True, _DRAINS), "policy": (True, _DRAINS), "stats": (True, _DRAINS),
    "migrate": (True, _DRAINS),
    "metrics": (True, _READS), "explain": (True, _READS), "topqueues": (True, _READS),
    "lock": (False, _DRAINS), "prune": (False, _DRAINS), "due": (False, _DRAINS),
}


@cache
def library():
    """library_text of every script of SCRIPT_FLAGS: what sharqd loads
    (and the benches)."""
    return library_text([(name, shared, flags) for name, (shared, flags)
                         in SCRIPT_FLAGS.items()])
