"""Object stores behind one small interface (`ObjectStore`): S3 and native GCS."""

from driver.store.base import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    IncompleteResponse,
    InvalidRequest,
    ListPage,
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoreError,
    UploadOptions,
)

__all__ = [
    "AccessDenied", "BucketNotFound", "EndpointUnreachable", "IncompleteResponse", "InvalidRequest",
    "ListPage",
    "NotFound", "ObjectInfo", "ObjectStore", "PreconditionFailed", "StoreError", "UploadOptions",
]
