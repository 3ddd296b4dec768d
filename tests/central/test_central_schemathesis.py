"""schemathesis against central's own OpenAPI document: for every operation, bodies, paths and
queries generated from the document (and some that break it) never get a server error, and
every answer has a status, content type and body the document allows.

Bounded: a few examples per operation, so the whole run stays within tens of seconds."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from central_helpers import T0, make_firm
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode, checks

from licentia.central.api import create_app
from licentia.central.db import Database, sqlite_url
from licentia.central.service import Central

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def _served() -> tuple[Any, str, Database]:
    """Central over a SQLite database of its own (schemathesis reads the document at import)."""
    directory = Path(tempfile.mkdtemp(prefix="licentia-schemathesis-"))
    atexit.register(shutil.rmtree, directory, True)
    db = Database(sqlite_url(directory / "central.db"))
    db.migrate()
    central = Central(db, make_firm())
    token = central.ensure_admin_token(T0)
    assert token is not None
    return create_app(central), token, db


APP, TOKEN, DB = _served()
atexit.register(DB.dispose)
schema = schemathesis.openapi.from_asgi("/api/openapi.json", APP)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
def test_no_server_error_and_answers_match_the_document(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)
