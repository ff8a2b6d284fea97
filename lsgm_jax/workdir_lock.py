"""One trainer per workdir: an exclusive lock held by process 0 for a whole training run.

Two trainers writing checkpoints into one workdir replace each other's steps (Orbax's
``save(..., force=True)`` overwrote a step another process had written; without force,
each still prunes the other's files). ``--mode=train`` therefore takes this lock first
and a second trainer stops with one line naming the holder.

Local (and NFS/Lustre with working ``flock``) workdirs: ``<workdir>/.lock``, held with
``fcntl.flock(LOCK_EX | LOCK_NB)`` on an open file. The kernel drops the lock when the
holder dies, however it dies, so a stale lock (a SIGKILLed or crashed trainer) is taken
over at once, with a warning naming the old holder.

Object stores (``gs://``, ``s3://``): there is no atomic create in the file API used
here, so the equivalent is a lease: ``<workdir>/lock.json`` with holder and a heartbeat
renewed at every checkpoint save and every ``LEASE_RENEW_S``; a trainer finding a
heartbeat younger than ``LEASE_TIMEOUT_S`` refuses to start. The check-then-write has a
window of a few seconds in which two trainers started at the same moment can both pass;
start pod jobs through one launcher (``launch/``) to avoid it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
from typing import Any

from absl import logging

LEASE_TIMEOUT_S = 600.0
LEASE_RENEW_S = 60.0


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds this workdir."""


def _holder() -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "heartbeat": time.time()}


def _describe(info: dict[str, Any]) -> str:
  return (f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
          f"since {info.get('since', '?')}")


class WorkdirLock:
  """``with WorkdirLock(workdir): train...`` -- see the module docstring."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.remote = "://" in workdir
    self._handle = None
    self._last_renew = 0.0

  # --- local filesystems ----------------------------------------------------------------

  def _acquire_local(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    path = os.path.join(self.workdir, ".lock")
    handle = open(path, "a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      handle.seek(0)
      info = _parse(handle.read())
      handle.close()
      raise WorkdirLockedError(
          f"workdir {self.workdir} is in use by another trainer ({_describe(info)}); "
          "stop it or choose another --workdir") from None
    handle.seek(0)
    previous = _parse(handle.read())
    if previous:
      logging.warning("taking over the lock of %s left by a trainer that is gone (%s)",
                      self.workdir, _describe(previous))
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder()))
    handle.flush()
    self._handle = handle

  def _release_local(self) -> None:
    if self._handle is None:
      return
    self._handle.seek(0)
    self._handle.truncate()  # an empty file: released cleanly, nothing stale to report
    self._handle.flush()
    fcntl.flock(self._handle, fcntl.LOCK_UN)
    self._handle.close()
    self._handle = None

  # --- object stores (lease) ------------------------------------------------------------

  def _lease_path(self):
    from etils import epath  # pylint: disable=g-import-not-at-top  (orbax's path library)
    return epath.Path(self.workdir) / "lock.json"

  def _acquire_remote(self) -> None:
    path = self._lease_path()
    if path.exists():
      info = _parse(path.read_text())
      age = time.time() - float(info.get("heartbeat", 0.0))
      if info and age < LEASE_TIMEOUT_S:
        raise WorkdirLockedError(
            f"workdir {self.workdir} is in use by another trainer ({_describe(info)}; "
            f"heartbeat {age:.0f} s ago); stop it or choose another --workdir")
      if info:
        logging.warning("taking over the lease of %s: its holder (%s) has not renewed it "
                        "for %.0f s", self.workdir, _describe(info), age)
    path.parent.mkdir(parents=True, exist_ok=True)
    self._info = _holder()
    path.write_text(json.dumps(self._info))
    self._last_renew = time.time()

  def renew(self) -> None:
    """Refreshes the lease's heartbeat (object stores; a no-op for local workdirs)."""
    if not self.remote or time.time() - self._last_renew < LEASE_RENEW_S:
      return
    self._info["heartbeat"] = time.time()
    self._lease_path().write_text(json.dumps(self._info))
    self._last_renew = time.time()

  def _release_remote(self) -> None:
    path = self._lease_path()
    if path.exists() and _parse(path.read_text()).get("pid") == os.getpid():
      path.unlink()

  # --- context manager ------------------------------------------------------------------

  def __enter__(self) -> "WorkdirLock":
    if self.remote:
      self._acquire_remote()
    else:
      self._acquire_local()
    return self

  def __exit__(self, *exc) -> None:
    if self.remote:
      self._release_remote()
    else:
      self._release_local()


def _parse(text: str) -> dict[str, Any]:
  try:
    info = json.loads(text) if text.strip() else {}
  except ValueError:
    return {}
  return info if isinstance(info, dict) else {}
