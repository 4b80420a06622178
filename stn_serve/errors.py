"""Domain exceptions shared by every part of stn-serve.

`stn_serve.contract.status` maps them to gRPC status codes for the server and back for the client;
the CLI turns them into a one-line message and exit code 2. Messages name the bad value and the expected one.
"""


class StnServeError(Exception):
    """Base class: an error whose message is fit to show a user as it is."""


class InvalidInputError(StnServeError, ValueError):
    """A request, file or argument is malformed (wrong shape, dtype, encoding, value)."""


class NotFoundError(StnServeError, LookupError):
    """A model, version, checkpoint or data file does not exist."""


class ResourceExhaustedError(StnServeError):
    """A bounded resource is full (request queue, message size, images per request)."""


class NotReadyError(StnServeError):
    """The model or server is not ready to answer (loading, or shutting down)."""


class DeadlineExceededError(StnServeError):
    """A request's deadline passed before it could run."""


class RequestCancelledError(StnServeError):
    """The client cancelled a request (or went away) before it was answered."""


class NotAllowedError(StnServeError):
    """The server's configuration does not allow the operation (e.g. loading a model when model
    control is not explicit)."""


class DeviceUnavailableError(StnServeError):
    """The requested device cannot run models (e.g. `--device cuda` on a machine without CUDA)."""
