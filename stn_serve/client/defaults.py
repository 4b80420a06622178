"""The client's defaults, apart so the command line's flags can read them without loading gRPC."""

#: Deadline in seconds of each unary call.
DEFAULT_TIMEOUT_S = 30.0
#: The largest request or response a channel accepts, in MiB.
DEFAULT_MAX_MESSAGE_MB = 64.0
