"""Time grids for fixed-step samplers, from t = T down to a small eps.

Two stridings (CLD paper, App. on SSCS / EM experiments: "linear" and "quadratic"
striding of the integration times):

* ``linear``:    t_i = T - (i / N) (T - eps)
* ``quadratic``: t_i = eps + (T - eps) (1 - i / N)^2, i.e. the reverse time
  tau = T - t is quadratic in i; steps are large near the prior and small near the
  data, where the score changes fastest.

The grid is built with numpy in float64 at trace time (N is static) and becomes one
constant of the compiled program, so a 1000-step sampler is still one program.
"""

from __future__ import annotations

import numpy as np

STRIDINGS = ("linear", "quadratic")


def time_grid(num_steps: int, *, t_max: float = 1.0, eps: float = 1e-3,
              striding: str = "linear") -> np.ndarray:
  """The ``num_steps + 1`` decreasing times of a reverse-time integration.

  Args:
    num_steps: number of steps N (> 0).
    t_max: start time, the SDE's ``T``.
    eps: final time (> 0 keeps the score finite; default 1e-3 as in score_sde).
    striding: ``"linear"`` or ``"quadratic"`` (see the module docstring).

  Returns:
    float64 numpy array ``[N + 1]`` with ``t[0] = t_max``, ``t[N] = eps``, strictly
    decreasing.

  Raises:
    ValueError: for an unknown striding, N < 1 or eps outside [0, t_max).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if not 0.0 <= eps < t_max:
    raise ValueError(f"need 0 <= eps < t_max, got eps={eps}, t_max={t_max}")
  s = np.linspace(0.0, 1.0, num_steps + 1, dtype=np.float64)
  if striding == "linear":
    return t_max - s * (t_max - eps)
  if striding == "quadratic":
    # CLD paper, quadratic striding: reverse time tau_i = (T - eps) (1 - (1 - i/N)^2).
    return eps + (t_max - eps) * (1.0 - s)**2
  raise ValueError(f"unknown striding {striding!r}; valid: {', '.join(STRIDINGS)}")


def step_table(num_steps: int, *, t_max: float = 1.0, eps: float = 1e-3,
               striding: str = "linear") -> tuple[np.ndarray, np.ndarray]:
  """Per-step (start time, positive step size) arrays for a ``lax.scan`` over steps.

  Args:
    num_steps, t_max, eps, striding: as in :func:`time_grid`.

  Returns:
    (t_start ``[N]``, dt ``[N]``) as float32 numpy arrays; step i integrates the reverse
    process from ``t_start[i]`` to ``t_start[i] - dt[i]``. ``dt`` is taken in float64
    before the cast so that it does not suffer cancellation at small t.
  """
  t = time_grid(num_steps, t_max=t_max, eps=eps, striding=striding)
  return t[:-1].astype(np.float32), (t[:-1] - t[1:]).astype(np.float32)
