"""tscale worker process (installed as the `tscale_workers` package)."""
