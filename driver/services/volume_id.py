"""Volume ids of dynamically provisioned volumes: a self-describing store location.

DeleteVolume receives nothing but the volume id (and the provisioner's secret), so the id
must say where the prefix lives: bucket, prefix, and what is needed to reach the store
(endpoint, provider, region, path style). It is a versioned, URL-encoded string such as
`cb1:b=my-bucket&p=pvs%2Fpvc-1234%2F&e=https%3A%2F%2Fr2.example.com`. Ids that do not decode
were not made by this controller: DeleteVolume treats them as already gone and
ValidateVolumeCapabilities as NOT_FOUND. The prefix is never empty, so a DeleteVolume can
never empty a whole bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from driver.options import OptionError
from driver.volume import (
    ATTR_BUCKET,
    ATTR_ENDPOINT,
    ATTR_PATH_STYLE,
    ATTR_PREFIX,
    ATTR_PROVIDER,
    ATTR_REGION,
    MountOptions,
    VolumeError,
    parse_option_values,
    validate_bucket,
)

VERSION = "cb1:"
# short key in the id -> (volume attribute, mount option)
_FIELDS = {
    "b": (ATTR_BUCKET, None),
    "p": (ATTR_PREFIX, "prefix"),
    "e": (ATTR_ENDPOINT, "endpoint-url"),
    "v": (ATTR_PROVIDER, "provider"),
    "r": (ATTR_REGION, "region"),
    "s": (ATTR_PATH_STYLE, "force-path-style"),
}


@dataclass(frozen=True)
class Location:
    """Where a provisioned volume's objects live, and how to reach that store."""

    bucket: str
    options: MountOptions  # prefix, endpoint_url, provider, region, force_path_style

    @property
    def prefix(self) -> str:
        return self.options.prefix


def encode(attributes: dict[str, str]) -> str:
    """The id of a volume whose (validated) attributes are `attributes`."""
    pairs = [(short, attributes[attr]) for short, (attr, _) in _FIELDS.items()
             if attributes.get(attr)]
    return VERSION + urlencode(pairs)


def decode(volume_id: str) -> Location | None:
    """The location an id names, or None when it is not an id this controller made."""
    if not volume_id.startswith(VERSION):
        return None
    try:
        pairs = parse_qsl(volume_id[len(VERSION):], keep_blank_values=True,
                          strict_parsing=True)
    except ValueError:
        return None
    values = dict(pairs)
    if len(values) != len(pairs) or not set(values) <= set(_FIELDS) or \
            not values.get("b") or not values.get("p"):
        return None
    try:
        bucket = validate_bucket(values["b"])
        options = parse_option_values({_FIELDS[short][1]: text for short, text in values.items()
                                       if _FIELDS[short][1] is not None})
    except (VolumeError, OptionError):
        return None
    return Location(bucket=bucket, options=options)
