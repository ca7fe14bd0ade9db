import os
import sys

# the tests import their support module as `support`
sys.path.insert(0, os.path.dirname(__file__))
