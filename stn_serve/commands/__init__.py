"""One module per `stn-serve` sub-command; see `stn_serve.cli`."""
