"""
schemathesis against a live `twistd -n sharq` on a real redis-server: every
operation of the OpenAPI document, 200 examples each (valid and invalid
input), checked for server errors and for status codes, content types and
bodies that the document allows.
"""

import signal

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

from sharqd.web.openapi import DOCUMENT
from support import Sharqd, shared_redis

EXAMPLES = 200
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# a long-poll answers after `wait` seconds when no job comes: keep each
# under 50 ms so 200 examples stay quick (values stay within the schema)
MAX_WAIT = 0.05

schema = schemathesis.openapi.from_dict(DOCUMENT)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    server = Sharqd(str(tmp_path_factory.mktemp("schemathesis")), shared_redis(),
                    extra_server="max_request_size : 65536").start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop(signal.SIGKILL)


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck),
                     database=None, derandomize=True)
def test_api_conforms(case, base_url):
    """When any operation is called with generated input, sharqd answers
    no 5xx, and only codes, content types and bodies the document has."""
    if _seconds((case.query or {}).get("wait")) > MAX_WAIT:
        case.query["wait"] = MAX_WAIT
    case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=10)


def _seconds(value):
    """A generated `wait` as a number of seconds (0 when it is none)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
