"""The gRPC server: stn.v1 (the service's own API), the Open Inference Protocol (KServe v2), health
and reflection, with dynamic batching in front of `stn_serve.runtime`.

Serving side: never imports torch.
"""

from stn_serve.server.app import StnServer, create_server, serve
from stn_serve.server.options import ServerOptions

__all__ = ["ServerOptions", "StnServer", "create_server", "serve"]
