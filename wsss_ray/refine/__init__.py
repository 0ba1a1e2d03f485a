"""Seed refinement: dense CRF, IRN confident labels, boundary affinities and the random walk (pure torch)."""
