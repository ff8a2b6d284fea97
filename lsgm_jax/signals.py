"""Signals that arrive before the training loop installs its own handlers.

``main`` calls ``install_early`` first thing, before the slow imports (TensorFlow, jax),
so a SIGTERM or Ctrl-C during start-up is remembered instead of killing the process
(exit 143); ``train.Preemption`` then treats it as a preemption before the first step:
nothing to save, exit 0. Imports nothing heavy.
"""

from __future__ import annotations

import signal

_received: list[int] = []


def _remember(signum, frame) -> None:
  del frame
  _received.append(signum)


def install_early() -> None:
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _remember)


def received() -> bool:
  """Whether a SIGTERM / SIGINT arrived since ``install_early``."""
  return bool(_received)
