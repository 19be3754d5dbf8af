"""The transport: the orchestrator's ROUTER server, remote workers, clients, CURVE (``docs/protocol.md``)."""

from ppu.transport.client import AsyncPPUClient, PPUClient
from ppu.transport.lab import EmbeddedLab, LabThread
from ppu.transport.security import Authorizer, CurveKeys, generate_keys, peer_keys
from ppu.transport.server import OrchestratorServer, RemoteLink
from ppu.transport.worker import Worker

__all__ = ["AsyncPPUClient", "Authorizer", "CurveKeys", "EmbeddedLab", "LabThread", "OrchestratorServer",
           "PPUClient", "RemoteLink", "Worker", "generate_keys", "peer_keys"]
