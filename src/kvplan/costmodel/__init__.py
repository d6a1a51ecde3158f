"""Cost model: architecture arithmetic and the vectorized JAX performance model."""
