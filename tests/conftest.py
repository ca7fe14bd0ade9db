import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# the tests import the tree they sit in (not an installed copy: sharqd and
# the client package under clients/python) and their support module as
# `support`
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "clients", "python"),
                HERE]

# the `server` (a sharqd of its own per module) and `client` fixtures of the
# client, worker, sharqctl and import tests
pytest_plugins = ["client_support"]
