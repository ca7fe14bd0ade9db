"""
The Redis protocol (RESP) encoding of a command.  Standard library only, so
the bench driver uses it too.
"""


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
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)
