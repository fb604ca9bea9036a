"""The CSI gRPC servicers: Identity, Node and Controller. They translate CSI messages to and
from the driver's own types (`volume.VolumeSpec`, the mounts supervisor, the object store)
and raise `CsiError` for every failure; `driver.server` turns errors into gRPC statuses."""
