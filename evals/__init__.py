"""Long-context evaluation: a RULER-class suite (NVIDIA, arXiv 2404.06654), our own implementation
of its published task definitions, with the effective length (`longctx eval ruler`)."""
