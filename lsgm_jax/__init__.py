"""lsgm_jax: score-based generative models and deep latent VAEs in JAX/Flax.

One training loop (``lsgm_jax.train``) serves every family; see ``DESIGN.md`` in the
steering repo for the layers and the README for usage.
"""

__version__ = "0.1.0"
