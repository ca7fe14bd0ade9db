"""
The dashboard's static files (GET /dashboard/): plain HTML, CSS and JS that
read the public JSON API; charts are drawn as SVG by dashboard.js itself.
Read once, served from memory.
"""

from importlib import resources

from sharqd.errors import NotFound

_TYPES = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
          "css": b"text/css; charset=utf-8", "svg": b"image/svg+xml"}
_FILES = {}


def _load():
    for entry in resources.files(__name__).iterdir():
        kind = entry.name.rsplit(".", 1)[-1]
        if kind in _TYPES:
            _FILES[entry.name] = (_TYPES[kind], entry.read_bytes())


def asset(name):
    """(content type, bytes) of a dashboard file; NotFound for any other name."""
    if not _FILES:
        _load()
    try:
        return _FILES[name]
    except KeyError:
        raise NotFound(f"No such dashboard file: {name}") from None
