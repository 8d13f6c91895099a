"""MPI for messages, dsm for a large shared array: the way an HPC program combines them.

    mpirun -np 3 dsm run --directory tcp://HOST:7400 -- python3 examples/mpi_shared_array.py

Each rank is an MPI rank (mpi4py's ``COMM_WORLD``) and a dsm node at once: ``dsm run`` takes the
rank and the size from Open MPI (``OMPI_COMM_WORLD_RANK``/``_SIZE``, ``dsm/launchers.py``), so
``node.rank``/``node.size`` agree with MPI's. The ranks fill one shared ``size x ROWS x COLS``
array, each its own slab, in place (no copy travels by MPI); small messages (a barrier, the
checksums) go by MPI. Then every rank reads its neighbour's slab straight from the shared array,
and rank 0 gathers every rank's checksum and compares the whole array with numpy's. Every rank
prints one line, ending MATCH or MISMATCH; the exit status is 0 iff it matched.

(Sequential consistency makes MPI's ordering enough: a write done before ``Barrier`` is what
any rank reads after it.) Needs mpi4py (``pip install mpi4py``, against the MPI that mpirun
belongs to: Debian's ``libopenmpi-dev``).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from mpi4py import MPI

import dsm

#: each rank's slab: 256 x 4096 float64, 8 MiB (2048 pages)
ROWS, COLS = 256, 4096


def slab(rank: int) -> np.ndarray:
    """What rank ``rank`` writes into its slab."""
    return rank * 1000.0 + np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS) % 997


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    with dsm.attach() as node:
        if (node.rank, node.size) != (rank, size):
            print(f"mpi example: dsm says rank {node.rank} of {node.size}, MPI {rank} of {size}",
                  flush=True)
            return 1
        # one array per run (dsm run names the run after Open MPI's job: DSM_RUN)
        name = f"mpi-example.{os.environ.get('DSM_RUN', 'run')}"
        shared = node.array(name, (size, ROWS, COLS), np.float64)
        shared[rank] = slab(rank)                       # through dsm: pages, not messages
        comm.Barrier()                                  # through MPI: a small message
        right = (rank + 1) % size
        neighbour_ok = bool(np.array_equal(shared[right], slab(right)))
        checksums = comm.gather(float(shared[rank].sum()), root=0)
        whole_ok = True
        if rank == 0:
            want = np.stack([slab(r) for r in range(size)])
            whole_ok = (bool(np.array_equal(shared[:], want))
                        and checksums == [float(want[r].sum()) for r in range(size)])
        whole_ok = comm.bcast(whole_ok, root=0)
        comm.Barrier()  # nobody leaves while another still reads
        ok = neighbour_ok and whole_ok
        print(f"mpi example: rank {rank} of {size} (dsm node {node.name}): wrote "
              f"{shared[rank].nbytes >> 20} MiB in the shared array, read rank {right}'s slab "
              f"from it, {'MATCH' if ok else 'MISMATCH'} numpy", flush=True)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
