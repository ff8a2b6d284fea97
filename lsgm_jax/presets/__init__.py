"""The papers' architecture hyperparameters, in one place (issue 16 item 2).

``models/`` holds architectures only; the configurations that the papers and their
reference repositories use live here, one module per architecture:

* ``lsgm_jax.presets.hvae``: the latent VAE paper's Table 5 deep VAEs (``CONFIGS``);
* ``lsgm_jax.presets.nvae``: LSGM's NVAEs (CIFAR-10 vae1-3, MNIST);
* ``lsgm_jax.presets.ncsnpp``: CLD-SGM's CIFAR-10 NCSN++ and LSGM's latent score models;
* ``lsgm_jax.presets.autoencoder``: the LDM first stages kl-f4 / f8 / f16 (``PRESETS``).

Methods look a preset up by the name in the config (``config.latent_vae.preset``,
``config.autoencoder.preset``); the files in ``configs/`` may import these to fill
their fields. A preset module imports only ``lsgm_jax.models``.
"""
