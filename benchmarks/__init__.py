"""Benchmarks: each module measures our path against a peer in the same run and returns a result dict."""
