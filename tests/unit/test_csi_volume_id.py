"""Volume ids of provisioned volumes encode their location and decode back exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from driver.services import volume_id


def test_round_trip_with_every_field() -> None:
    attributes = {"bucketName": "my-bucket", "keyPrefix": "pvs/pvc-1/",
                  "endpointUrl": "https://acct.r2.cloudflarestorage.com", "provider": "s3",
                  "region": "auto", "forcePathStyle": "true", "mountOptions": "uid=1"}
    location = volume_id.decode(volume_id.encode(attributes))
    assert location is not None
    assert location.bucket == "my-bucket" and location.prefix == "pvs/pvc-1/"
    assert location.options.endpoint_url == "https://acct.r2.cloudflarestorage.com"
    assert location.options.region == "auto"
    assert location.options.force_path_style is True
    assert location.options.uid is None  # mount options are not part of the location


def test_ids_not_made_here_do_not_decode() -> None:
    for foreign in ("fake-vol-id", "pvc-123", "cb1:", "cb1:b=bucket", "cb1:p=x/",
                    "cb1:b=bucket&p=", "cb1:b=bucket&p=no-slash", "cb1:b=Bad_Bucket&p=x/",
                    "cb1:b=bucket&p=x/&z=1", "cb1:b=bucket&b=other&p=x/",
                    "cb1:b=bucket&p=x/&e=ftp%3A%2F%2Fh"):
        assert volume_id.decode(foreign) is None, foreign


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1,
                  max_size=20).filter(lambda s: s not in (".", ".."))


@given(bucket=st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True),
       segments=st.lists(segment, min_size=1, max_size=4))
def test_round_trip_property(bucket: str, segments: list[str]) -> None:
    prefix = "/".join(segments) + "/"
    location = volume_id.decode(volume_id.encode({"bucketName": bucket, "keyPrefix": prefix}))
    assert location is not None
    assert (location.bucket, location.prefix) == (bucket, prefix)
