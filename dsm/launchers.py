"""Rank and size from the launcher that started this process: Slurm, Open MPI or a PMI launcher
(MPICH's Hydra, Intel MPI, ``srun --mpi=pmi2``).

``DSM_RANK`` and ``DSM_NODES`` say it explicitly and come first: they are what ``dsm run`` and
``dsm-node`` pass to a workload, and what a user sets by hand. Only when ``DSM_NODES`` is not set
are the launchers' variables read, in this order (the first whose rank and size are both set
wins; Slurm first, because ``srun`` of an MPI program sets Slurm's and PMI's, which agree):

=========== ======================== ======================== ===========================
launcher    rank                     size                     job (names a run)
=========== ======================== ======================== ===========================
Slurm       ``SLURM_PROCID``         ``SLURM_NTASKS``         ``SLURM_JOB_ID.SLURM_STEP_ID``
Open MPI    ``OMPI_COMM_WORLD_RANK`` ``OMPI_COMM_WORLD_SIZE`` ``OMPI_MCA_ess_base_jobid``
PMI         ``PMI_RANK``             ``PMI_SIZE``             (none)
=========== ======================== ======================== ===========================

Outside a launcher (and without ``DSM_NODES``) there is no rank: ``node.rank`` and ``node.size``
are ``None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from dsm.errors import ConfigError

RANK_ENV = "DSM_RANK"
SIZE_ENV = "DSM_NODES"
#: a run name for every node of a run (the workloads name their arrays after it)
RUN_ENV = "DSM_RUN"
#: environment variable through which ``dsm run`` tells a workload where its agent listens
AGENT_SOCKET_ENV = "DSM_AGENT_SOCKET"
#: where the directory is, for a workload's atomics to go straight there: ``dsm run`` sets it
#: (a cluster with keys leaves it unset: its workloads hold no keys, and go through the agent)
ATOMICS_ENDPOINT_ENV = "DSM_ATOMICS_ENDPOINT"


@dataclass(frozen=True)
class LauncherVars:
    name: str
    rank: str
    size: str
    #: variables that, joined by ".", name the job (empty: the launcher names none)
    job: tuple[str, ...] = ()


LAUNCHERS = (
    LauncherVars("slurm", "SLURM_PROCID", "SLURM_NTASKS", ("SLURM_JOB_ID", "SLURM_STEP_ID")),
    LauncherVars("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                 ("OMPI_MCA_ess_base_jobid",)),
    LauncherVars("pmi", "PMI_RANK", "PMI_SIZE"),
)
#: the launchers' size variables, for help texts
NODES_ENV_HELP = ", ".join(f"${v.size}" for v in LAUNCHERS)


@dataclass(frozen=True)
class Placement:
    """Where this process stands in its job: rank ``rank`` of ``size``."""

    #: "dsm" (``DSM_RANK``/``DSM_NODES``), "slurm", "openmpi" or "pmi"
    source: str
    rank: int | None
    size: int
    #: the launcher's name of the job, the same in every task of it (None if it names none)
    job: str | None = None


def _whole(env: Mapping[str, str], var: str, least: int) -> int:
    value = env[var]
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"${var} must be a whole number, got {value!r}") from None
    if number < least:
        raise ConfigError(f"${var} must be at least {least}, got {number}")
    return number


def placement(env: Mapping[str, str] | None = None) -> Placement | None:
    """This process's rank and size, from ``DSM_RANK``/``DSM_NODES`` or else a launcher; None
    when neither says. A variable that is set but not a number, or a rank outside ``0..size-1``,
    is an error naming it."""
    env = os.environ if env is None else env
    if env.get(SIZE_ENV, "") != "":
        size = _whole(env, SIZE_ENV, 1)
        rank = _whole(env, RANK_ENV, 0) if env.get(RANK_ENV, "") != "" else None
        found = Placement("dsm", rank, size)
        rank_var = RANK_ENV
    else:
        for launcher in LAUNCHERS:
            if env.get(launcher.rank, "") != "" and env.get(launcher.size, "") != "":
                parts = [env.get(v, "") for v in launcher.job]
                job = ".".join(parts) if launcher.job and all(parts) else None
                found = Placement(launcher.name, _whole(env, launcher.rank, 0),
                                  _whole(env, launcher.size, 1), job)
                rank_var = launcher.rank
                break
        else:
            return None
    if found.rank is not None and found.rank >= found.size:
        raise ConfigError(f"${rank_var} is {found.rank}, outside 0..{found.size - 1} "
                          f"(the size is {found.size})")
    return found


def job_name(where: Placement, env: Mapping[str, str] | None = None) -> str:
    """The name the directory knows ``where``'s job by (its barriers break together when a node
    of it dies): ``DSM_RUN`` if set, else the launcher's job, else "" (the job of every node
    placed by ``DSM_RANK``/``DSM_NODES`` alone)."""
    env = os.environ if env is None else env
    run = env.get(RUN_ENV, "")
    if run:
        return run
    return f"{where.source}-{where.job}" if where.job is not None else ""


def workload_env(where: Placement | None) -> dict[str, str]:
    """What ``dsm run`` adds to its command's environment: ``DSM_RANK`` and ``DSM_NODES`` (and
    ``DSM_RUN``, from the launcher's job, when the command has none), so that the workload and
    ``node.rank``/``node.size`` see the launcher's placement."""
    if where is None:
        return {}
    env = {SIZE_ENV: str(where.size)}
    if where.rank is not None:
        env[RANK_ENV] = str(where.rank)
    if where.job is not None:
        env[RUN_ENV] = f"{where.source}-{where.job}"
    return env
