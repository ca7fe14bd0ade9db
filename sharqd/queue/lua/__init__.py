"""
The Lua scripts of the queue operations, and the text sharqd sends for
each: common.lua's definitions that the operation uses, then the
operation's own file.  (Redis runs a script's whole text on every call:
each definition left out is a closure not made, about 0.1 µs each.)
Stdlib only: the benches read the scripts through script_text too.
"""

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


def script_text(name, shared=True):
    """What sharqd sends for lua/<name>.lua: after common.lua's statements
    that it uses, directly or through another (all of them when a
    statement defines no name), unless shared is False."""
    body = _DIR.joinpath(name + ".lua").read_bytes()
    if not shared:
        return body
    needed = set(_WORD.findall(_code(body)))
    kept = []
    # a statement uses only names defined before it: one pass backwards
    for names, text, uses in reversed(_chunks()):
        if not names or names & needed:
            kept.append(text)
            needed |= uses
    return b"\n".join(reversed(kept)) + b"\n" + body
