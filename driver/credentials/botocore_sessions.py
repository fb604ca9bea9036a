"""botocore sessions that share one data loader, for every AWS client of a process.

Service models are parsed once per process (in the supervisor's zygote, before it forks)
instead of once per session. Its own module so that aws.py and web_identity.py both use
it without importing each other (no import circle; see `make lint`).
"""

from __future__ import annotations

import functools

import botocore.loaders
import botocore.session


@functools.cache
def shared_loader() -> botocore.loaders.Loader:
    """One botocore data loader per process."""
    return botocore.loaders.create_loader()


def new_botocore_session() -> botocore.session.Session:
    core = botocore.session.Session()
    core.register_component("data_loader", shared_loader())
    return core
