"""The GCS backend's one error table (driver/store/gcs.py `_translate`), credential
errors included: refused Google credentials are AccessDenied and never echo the response."""

from __future__ import annotations

import google.api_core.exceptions as gexc
import google.auth.exceptions
import pytest
import requests

from driver.store import base
from driver.store.gcs import _translate


@pytest.mark.parametrize("error, expected", [
    (gexc.NotFound("no such object"), base.NotFound),
    (gexc.Forbidden("denied"), base.AccessDenied),
    (gexc.Unauthorized("bad token"), base.AccessDenied),
    (gexc.PreconditionFailed("generation mismatch"), base.PreconditionFailed),
    (gexc.BadRequest("bad"), base.InvalidRequest),
    (gexc.TooManyRequests("slow down"), base.StoreError),
    (gexc.InternalServerError("boom"), base.StoreError),
    (google.auth.exceptions.RefreshError("invalid_grant", {"assertion": "SECRET-A"}),
     base.AccessDenied),
    (google.auth.exceptions.OAuthError("invalid_grant", '{"subject_token": "SECRET-B"}'),
     base.AccessDenied),
    (google.auth.exceptions.DefaultCredentialsError("none"), base.AccessDenied),
    (google.auth.exceptions.TransportError("refused"), base.EndpointUnreachable),
    (requests.ConnectionError("refused"), base.EndpointUnreachable),
])
def test_translate(error: Exception, expected: type[base.StoreError]) -> None:
    translated = _translate(error, "GET k")
    assert type(translated) is expected
    assert str(translated).startswith("GET k")
    assert "SECRET" not in str(translated)
