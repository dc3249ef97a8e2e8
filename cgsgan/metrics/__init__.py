"""Distribution distances and feature extractors for evaluating generators."""
