"""alignkit: preference alignment for causal language models."""
