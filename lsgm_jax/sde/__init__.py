"""Diffusion processes as math only (see ``base.SDE`` for the interface)."""

from lsgm_jax.sde.base import SDE, ReverseSDE, ScoreFn, batch_broadcast
from lsgm_jax.sde.cld import CLD, CLDReverseSDE, cld_mixed_score
from lsgm_jax.sde.ve import VESDE
from lsgm_jax.sde.vp import SubVPSDE, VPSDE

__all__ = [
    "SDE", "ReverseSDE", "ScoreFn", "batch_broadcast",
    "VPSDE", "SubVPSDE", "VESDE", "CLD", "CLDReverseSDE", "cld_mixed_score",
]
