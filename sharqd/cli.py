"""
`sharq-server -c FILE [-gc GUNICORN_FILE]`, the original SharQ Server's
command: runs the same twistd service in the foreground.
"""

import argparse
import sys

from sharqd import __version__


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="sharq-server",
        description="sharqd: rate-limited job queue server (SharQ Server API).")
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


if __name__ == "__main__":
    main()
