"""
The Redis protocol (RESP) encoding of a command.  Standard library only, so
the bench driver uses it too.
"""

# "$<length>\r\n" of the lengths most arguments have, made once: formatting
# it per argument was most of the cost of encoding a command
_LENGTHS = [b"$%d\r\n" % n for n in range(1024)]


def encode_command(args):
    """A command in the Redis protocol, from bytes, str and int args."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)  # exact types first: every command goes through here
        if kind is bytes:
            pass
        elif kind is str or isinstance(arg, str):
            arg = arg.encode()
        elif kind is int or isinstance(arg, int):
            arg = b"%d" % arg
        n = len(arg)
        parts.append(_LENGTHS[n] if n < 1024 else b"$%d\r\n" % n)
        parts.append(arg)
        parts.append(b"\r\n")
    return b"".join(parts)
