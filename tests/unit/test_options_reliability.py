"""The reliability options: --memory-target and --request-timeout, parsed in one place."""

from __future__ import annotations

import pytest

from driver.options import MountOptions, OptionError, parse_mount_flags
from driver.store.retry import Timeouts


def test_memory_target_and_request_timeout_parse_from_mount_options():
    options = parse_mount_flags(["memory-target=32", "request-timeout=8.5"])
    assert (options.memory_target, options.request_timeout) == (32, 8.5)
    assert MountOptions.from_dict(options.to_dict()) == options
    assert "--memory-target=32" in options.to_args()


@pytest.mark.parametrize(("flag", "field"), [
    ("memory-target=4", "memory-target"), ("memory-target=lots", "memory-target"),
    ("request-timeout=0.5", "request-timeout"), ("request-timeout=nan", "request-timeout"),
])
def test_bad_values_are_refused_by_name(flag, field):
    with pytest.raises(OptionError) as caught:
        parse_mount_flags([flag])
    assert caught.value.field == field


def test_defaults_bound_every_operation_to_a_minute():
    defaults = MountOptions()
    timeouts = Timeouts(total=defaults.request_timeout)
    assert defaults.request_timeout <= 60
    assert timeouts.connect + timeouts.read < timeouts.total  # room for a retry
    assert defaults.memory_target == 128
