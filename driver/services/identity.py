"""CSI Identity: who the plugin is, which services it offers, and whether it is ready."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import wrappers_pb2

from driver import __version__
from driver.csi import csi_pb2, csi_pb2_grpc

DRIVER_NAME = "cloudbucket.csi.io"


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, controller: bool, ready: Callable[[], bool] = lambda: True) -> None:
        self._controller = controller
        self._ready = ready

    def GetPluginInfo(self, request: csi_pb2.GetPluginInfoRequest,
                      context: grpc.ServicerContext) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    def GetPluginCapabilities(self, request: csi_pb2.GetPluginCapabilitiesRequest,
                              context: grpc.ServicerContext,
                              ) -> csi_pb2.GetPluginCapabilitiesResponse:
        Service = csi_pb2.PluginCapability.Service
        capabilities = []
        if self._controller:
            capabilities.append(csi_pb2.PluginCapability(
                service=Service(type=Service.CONTROLLER_SERVICE)))
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=capabilities)

    def Probe(self, request: csi_pb2.ProbeRequest,
              context: grpc.ServicerContext) -> csi_pb2.ProbeResponse:
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=self._ready()))
