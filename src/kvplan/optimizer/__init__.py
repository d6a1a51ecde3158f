"""Search over deployments with Optuna and exhaustive enumeration."""
