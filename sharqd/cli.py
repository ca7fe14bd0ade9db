"""
`sharq-server -c FILE [-gc GUNICORN_FILE]`, the original SharQ Server's
command: runs the same twistd service in the foreground.

`sharq-server token new NAME --scope ACTION:TYPE-GLOB ...` makes a bearer
token: it prints the token once and the line for the tokens file, which
holds only the token's hash.
"""

import argparse
import sys

from sharqd import __version__


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_command(argv[1:])
    parser = argparse.ArgumentParser(
        prog="sharq-server",
        description="sharqd: rate-limited job queue server (SharQ Server API). "
                    "See also: sharq-server token new --help")
    parser.add_argument("-c", "--config", required=True, metavar="SHARQ_CONFIG",
                        help="Path of the SharQ configuration file.")
    parser.add_argument("-gc", "--gunicorn-config", metavar="GUNICORN_CONFIG",
                        help="Gunicorn configuration file: its bind, workers and "
                             "accesslog apply where the SharQ config does not "
                             "set them; other settings are ignored.")
    parser.add_argument("--version", action="version", version=f"sharqd {__version__}")
    args = parser.parse_args(argv)

    from twisted.scripts.twistd import run
    sys.argv = ["sharq-server", "--nodaemon", "--pidfile=", "sharq", "-c", args.config]
    if args.gunicorn_config:
        sys.argv += ["--gunicorn-config", args.gunicorn_config]
    run()


def token_command(argv):
    from sharqd.web import auth

    parser = argparse.ArgumentParser(
        prog="sharq-server token",
        description="Make a bearer token for [auth] tokens_file.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser(
        "new", help="print a new random token and its line for the tokens file",
        description="Print a new random token (shown once: give it to the client) "
                    "and the line to add to the tokens file.")
    new.add_argument("name", help="who or what holds the token, e.g. sms-producer")
    new.add_argument("--scope", action="append", required=True, metavar="ACTION:GLOB",
                     help="enqueue, work, read, admin or * and a queue type glob, "
                          "e.g. enqueue:sms or read:*; repeat for more")
    args = parser.parse_args(argv)
    try:
        line = auth.parse_line(f"{args.name} {'0' * 64} {','.join(args.scope)}")
    except ValueError as e:
        parser.error(str(e))
    token = auth.new_token()
    scopes = ",".join(f"{action}:{glob}" for action, glob in line.scopes)
    print(f"token (shown once; the client sends it as `Authorization: Bearer <token>`):\n"
          f"{token}\n\nline for the tokens file:\n"
          f"{args.name} {auth.hash_token(token)} {scopes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
