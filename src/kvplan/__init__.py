"""kvplan: plan vLLM deployments of large language models on GPU nodes."""

__version__ = "0.1.0"
