"""The gRPC server: stn.v1 (the service's own API), the Open Inference Protocol (KServe v2), health
and reflection, with admission control, bounded decoding and dynamic batching in front of
`stn_serve.runtime`; one process or several on one port.

Serving side: never imports torch. Names are imported on first use, so the command line reads
`ServerOptions`' defaults without loading gRPC.
"""

from __future__ import annotations

from stn_serve._lazy import lazy_exports

_EXPORTS = {
    "ServerOptions": "options",
    "StnServer": "app",
    "create_server": "app",
    "serve": "running",
    "serve_processes": "processes",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
