"""The one coded error type of the CSI layer, and the store-error translation table.

Any code under `driver.services` raises `CsiError(code, message)`; the server's interceptor
is the one place that turns it into a gRPC status (and anything else into INTERNAL). Messages
name the request field, attribute or secret key that is wrong, and never carry secret values.
"""

from __future__ import annotations

import grpc

from driver.store import base as store_errors
from driver.volume import VolumeError


class CsiError(Exception):
    """A failure with the gRPC status code the CO should see."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"CsiError({self.code.name}, {self.message!r})"


def invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def from_volume_error(exc: VolumeError) -> CsiError:
    """Bad attributes, mount options or secret keys: INVALID_ARGUMENT naming the field."""
    return invalid(str(exc))


def from_store_error(exc: store_errors.StoreError, bucket: str, field: str = "bucketName",
                     ) -> CsiError:
    """One table from the store's errors to gRPC codes (controller-side store access)."""
    if isinstance(exc, store_errors.BucketNotFound):
        return CsiError(grpc.StatusCode.NOT_FOUND, f"{field}: bucket {bucket} does not exist")
    if isinstance(exc, store_errors.AccessDenied):
        return CsiError(grpc.StatusCode.PERMISSION_DENIED,
                        f"access to bucket {bucket} denied: the store refused the credentials "
                        f"({exc})")
    if isinstance(exc, store_errors.EndpointUnreachable):
        return CsiError(grpc.StatusCode.UNAVAILABLE, f"cannot reach the store: {exc}")
    if isinstance(exc, store_errors.InvalidRequest):
        return invalid(f"the store rejected a request for bucket {bucket}: {exc}")
    return CsiError(grpc.StatusCode.INTERNAL, f"bucket {bucket}: {exc}")


def require(value: str, field: str) -> str:
    """Validate-first helper: a required string field of the request."""
    if not value:
        raise invalid(f"{field} is required")
    return value
