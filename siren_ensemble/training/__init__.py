"""Training SIREN heads: cached per-layer features, layer probes (stage 1), the MLP search (stage 2)."""
