"""lsgm_jax: score-based generative models and deep latent VAEs in JAX/Flax.

One training loop (``lsgm_jax.train``) serves every family; see ``docs/ARCHITECTURE.md``
for the layers, the seams and the equation-to-code index, and the README for usage.
"""

__version__ = "0.1.0"
