"""The LDM first stages' architectures (CompVis/latent-diffusion ``kl-f*`` configs), by name.

``PRESETS[name]`` is what ``config.autoencoder.preset=name`` builds
(``lsgm_jax.methods.autoencoder``); counts are pinned in tests/test_autoencoder.py.
"""

from __future__ import annotations

from lsgm_jax.models.autoencoder import AutoencoderConfig

# The LDM first stages (models/first_stage_models/kl-f*/config.yaml of
# CompVis/latent-diffusion). The latent VAE paper uses kl-f8 for ImageNet-256 (§4.3) and
# f = 4, 8, 16 for the LSUN Bedroom ablation (Table 5).
PRESETS: dict[str, AutoencoderConfig] = {
    "kl-f4": AutoencoderConfig(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2,
                               attn_resolutions=(), z_channels=3, embed_dim=3),
    "kl-f8": AutoencoderConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                               attn_resolutions=(), z_channels=4, embed_dim=4),
    "kl-f16": AutoencoderConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                                attn_resolutions=(16,), z_channels=16, embed_dim=16),
}
