"""schemathesis against the running server's OpenAPI document: generated requests for every operation, on a small
fixed budget, must never get a 5xx nor a response that disagrees with the document (status, content type,
headers, body schema)."""
from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
# A schema-valid request may still be refused for what a schema cannot say: a file that is not a dataset, an id
# that names nothing. Every other default check runs: no 5xx, documented status codes, content types, headers
# and body schemas.
from schemathesis.checks import positive_data_acceptance

from svc_helpers import API_KEY, AUTH, base_env, free_port, make_tiny_repo, uvicorn_server

# Per operation; ~17 operations. Derandomised: CI runs the same examples every time.
MAX_EXAMPLES = 12


@pytest.fixture(scope="module")
def schema_server(tmp_path_factory):
    """The embedded default with keys, as plain uvicorn (no worker: jobs stay queued, which is all the API
    promises), on a small teacher repository that generated DELETEs may not empty (their ids are random)."""
    tmp = tmp_path_factory.mktemp("schema")
    make_tiny_repo(tmp / "zoo")
    env = base_env(HUBSCOUT_DATA_DIR=str(tmp / "data"), HUBSCOUT_REPOSITORY_DIR=str(tmp / "zoo"),
                   HUBSCOUT_BUILD_DEMO_ZOO="false", HUBSCOUT_API_KEYS=API_KEY,
                   HUBSCOUT_MAX_UPLOAD_BYTES="200000", HUBSCOUT_MAX_TEACHER_UPLOAD_BYTES="200000",
                   HUBSCOUT_LOG_LEVEL="WARNING")
    port = free_port()
    proc = uvicorn_server("schema-api", env, tmp, port)
    yield f"http://127.0.0.1:{port}", proc
    proc.stop()


@pytest.fixture(scope="module")
def api_schema(schema_server):
    base_url, _ = schema_server
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_the_api_keeps_to_its_openapi_document(api_schema, schema_server):
    # Hypothesis driven directly (schemathesis' lazy pytest fixture does not support this pytest); every
    # operation runs its examples, and the failures of all are reported together.
    from hypothesis import given

    base_url, proc = schema_server
    failures, operations = {}, 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(base_url=base_url, headers=AUTH, excluded_checks=[positive_data_acceptance])

        try:
            run()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # the checks' report (an exception group), with the failing request
            failures[f"{operation.method.upper()} {operation.path}"] = str(e)[:3000]
    assert operations >= 15, operations
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert proc.alive()


def test_the_schema_server_logged_no_internal_error(schema_server):
    """Runs after the generated requests: nothing reached the catch-all 500 handler."""
    base_url, proc = schema_server
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200
    assert "unhandled error" not in proc.log()
