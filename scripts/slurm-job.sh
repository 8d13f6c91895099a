#!/usr/bin/env bash
# A dsm cluster as a Slurm batch job: the directory on the first task's host (where sbatch runs
# this script), `srun dsm run ...` on every task. Each task's rank and the job's size come from
# Slurm (SLURM_PROCID, SLURM_NTASKS): `dsm run` passes them to the workload as DSM_RANK and
# DSM_NODES, and names the run after the job (DSM_RUN=slurm-JOBID.STEPID).
#
#   sbatch -n 3 scripts/slurm-job.sh                           # jacobi, 3 tasks, wherever they fit
#   sbatch -N 4 --ntasks-per-node=1 scripts/slurm-job.sh       # one task on each of 4 hosts
#   DSM_WORKLOAD=matmul DSM_WORKLOAD_ARGS="--size 512" sbatch -n 4 scripts/slurm-job.sh
#
# The script asks for no task count or node count of its own: the command line says how many
# tasks (-n), and where (-N, --ntasks-per-node), so `-n 3` works on one host with 3 CPUs as on
# many hosts (a count in here would still apply beside the command line's, and `-n 3` on one
# host would be refused as "Requested node configuration is not available").
#
# Every node needs dsm installed (`pip install dsm-uffd`, or a shared venv: set DSM_VENV) and
# userfaultfd (`dsm doctor`: root or CAP_SYS_PTRACE, and /dev/userfaultfd or the syscall). Only
# the directory's port (DSM_PORT, default 7400) must be reachable from every node. With keys
# (README "Running a cluster with keys"), set DSM_KEYS=DIR on a file system every node sees.
#
#SBATCH --job-name=dsm
#SBATCH --time=00:15:00
set -euo pipefail

port="${DSM_PORT:-7400}"
workload="${DSM_WORKLOAD:-jacobi}"
region_size="${DSM_REGION_SIZE:-1GiB}"
#: seconds the directory may take to print its endpoint
start_timeout_s=30
[ -n "${DSM_VENV:-}" ] && export PATH="$DSM_VENV/bin:$PATH"
: "${SLURM_JOB_ID:?run this script with sbatch (or inside an allocation: salloc, srun --pty)}"

# the first host of the allocation: sbatch runs this script there
head="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
log="${TMPDIR:-/tmp}/dsm-directory-$SLURM_JOB_ID.log"

dsm directory --listen "tcp://0.0.0.0:$port" --region-size "$region_size" >"$log" 2>&1 &
directory=$!
trap 'kill "$directory" 2>/dev/null; wait "$directory" 2>/dev/null || true' EXIT
# scancel (or the time limit) signals every process of the job at once, this script, the
# directory and the tasks: the tasks leave, the directory tells them it is stopping too
cancelled() {
    echo "slurm-job: job $SLURM_JOB_ID cancelled ($1): the tasks leave, the directory stops"
    wait "${tasks:-}" 2>/dev/null || true
    exit $((128 + $2))
}
trap 'cancelled SIGTERM 15' TERM
trap 'cancelled SIGINT 2' INT

# ready when it has printed the endpoint it listens on (or failed: then say why)
deadline=$((SECONDS + start_timeout_s))
until grep -q "^directory listening on " "$log"; do
    if ! kill -0 "$directory" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
        echo "slurm-job: the directory did not start on $head:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.2
done
echo "slurm-job: directory on tcp://$head:$port; $SLURM_NTASKS tasks run $workload"

# word splitting of DSM_WORKLOAD_ARGS is intended: it holds the workload's flags
# (srun in the background: a signal to this script is handled at once, not when srun ends)
# DSM_TASK_OUTPUT, an srun --output pattern (e.g. dsm-%j-%t.out, on a file system every node
# sees), gives each task's output a file of its own. Without it the tasks share the job's
# output, into which srun forwards each task's in pieces of at most 1 KiB: a longer line (a
# workload's DSM-DEMO-RESULT) may be cut in two by another task's lines.
# shellcheck disable=SC2086
srun --kill-on-bad-exit=1 ${DSM_TASK_OUTPUT:+"--output=$DSM_TASK_OUTPUT"} \
    dsm run --directory "tcp://$head:$port" -- \
    python3 -m "dsm.workloads.$workload" ${DSM_WORKLOAD_ARGS:-} &
tasks=$!
wait "$tasks"
