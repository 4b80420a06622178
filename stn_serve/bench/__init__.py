"""Benchmarks behind `stn-serve bench NAME`: each module prints measured figures and ratios
against a baseline measured in the same run."""
