"""Start the trainer on every process of a SLURM allocation, or as one process when nothing is allocated.

Several processes go through torchrun's elastic agent (``torch.distributed.run``): one agent per node,
rendezvous at the first node of the allocation. The agent is run in this process rather than as the
``torchrun`` command so that the trainer's exit code 75 (checkpoint written after SIGTERM/SIGUSR1; run
again to resume) reaches SLURM and Snakemake instead of torchrun's generic 1. On CPU the same path runs
N gloo processes (``--nproc N``), which is how it is tested without GPUs.

Inside a Snakemake SLURM job most ``SLURM_*`` variables are removed before the job step starts (only
``SLURM_JOB_ID`` is kept), so the allocation is read from ``scontrol show job`` when they are missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .loop import STOP_SIGNALS
from .run import main as train_main

AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"
"""Signals torchrun's agent handles by stopping the trainers: not SIGTERM/SIGUSR1, which it would answer by
killing them after a timeout, and which the launcher passes on to them instead so that they checkpoint."""
RENDEZVOUS_PORT_BASE = 29500
RENDEZVOUS_PORT_SPAN = 10000


class LaunchError(RuntimeError):
    """The allocation cannot be read, or asks for a process layout the launcher cannot start."""


@dataclass(frozen=True)
class Allocation:
    """The part of a SLURM allocation the launcher needs: which job, which nodes, GPUs on each node."""

    job_id: str
    hosts: tuple[str, ...]
    gpus_per_node: int

    @property
    def head(self) -> str:
        return self.hosts[0]

    @property
    def rendezvous_port(self) -> int:
        """A port per job, so that two jobs sharing a node do not meet at the same rendezvous."""
        return RENDEZVOUS_PORT_BASE + int(self.job_id) % RENDEZVOUS_PORT_SPAN


def run_client(*command: str) -> str:
    """Run a SLURM client (scontrol) and return its stdout; fail naming the command."""
    if shutil.which(command[0]) is None:
        raise LaunchError(f"{command[0]} is not on PATH, but SLURM_JOB_ID is set: cannot read the allocation")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LaunchError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a mapping (NodeList, NumNodes, TresPerNode, ...)."""
    out = run_client("scontrol", "show", "job", "-o", job_id)
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def allocated_gpus(alloc_tres: str) -> int:
    """GPUs of the whole job in scontrol's AllocTRES (``cpu=2,mem=1G,node=2,billing=2,gres/gpu=8``)."""
    for item in alloc_tres.split(","):
        name, _, count = item.partition("=")
        if name == "gres/gpu" and count.isdigit():
            return int(count)
    return 0


def hostnames(nodelist: str) -> tuple[str, ...]:
    """Host names of a SLURM node list; ranges such as ``gpu[01-04]`` are expanded by scontrol."""
    if "[" in nodelist:
        return tuple(run_client("scontrol", "show", "hostnames", nodelist).split())
    return tuple(host for host in nodelist.split(",") if host)


def slurm_allocation(env: Mapping[str, str]) -> Allocation | None:
    """The allocation this process runs in (None outside SLURM), from SLURM's variables or scontrol."""
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        return None
    nodelist, gpus = env.get("SLURM_JOB_NODELIST"), env.get("SLURM_GPUS_ON_NODE")
    fields = job_fields(job_id) if nodelist is None or gpus is None else {}
    nodelist = nodelist or fields.get("NodeList", "")
    hosts = hostnames(nodelist)
    if not hosts:
        raise LaunchError(f"SLURM job {job_id}: no nodes in its node list {nodelist!r}")
    if gpus is None:
        gpus = str(allocated_gpus(fields.get("AllocTRES", "")) // len(hosts))
    return Allocation(job_id=job_id, hosts=hosts, gpus_per_node=int(gpus or 0))


def visible_devices(env: Mapping[str, str]) -> int:
    """GPUs named in CUDA_VISIBLE_DEVICES (0 when unset or empty)."""
    value = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    return len([device for device in value.split(",") if device]) if value else 0


def processes_per_node(requested: int | None, allocation: Allocation | None, env: Mapping[str, str]) -> int:
    """``--nproc`` if given, else one process per GPU of the node (SLURM, then CUDA_VISIBLE_DEVICES), else 1."""
    if requested is not None:
        if requested < 1:
            raise LaunchError(f"--nproc must be at least 1, got {requested}")
        return requested
    gpus = allocation.gpus_per_node if allocation else 0
    return gpus or visible_devices(env) or 1


def trainer_args(spec: Path, out: Path) -> list[str]:
    return ["--spec", str(spec), "--out", str(out)]


def torchrun_args(nproc: int, allocation: Allocation | None, spec: Path, out: Path) -> list[str]:
    """torchrun's arguments: standalone on one node, c10d rendezvous at the head node across several."""
    if allocation is None or len(allocation.hosts) == 1:
        layout = ["--standalone", "--nnodes", "1"]
    else:
        layout = ["--nnodes", str(len(allocation.hosts)), "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"{allocation.head}:{allocation.rendezvous_port}",
                  "--rdzv-id", allocation.job_id]
    return [*layout, "--nproc-per-node", str(nproc), "--signals-to-handle", AGENT_SIGNALS,
            "--module", "transfer_scaling.train",
            *trainer_args(spec, out)]


def srun_command(allocation: Allocation, nproc: int, spec: Path, out: Path) -> list[str]:
    """One launcher per node of a multi-node allocation; each runs torchrun for its node's processes."""
    gpus = [f"--gpus-per-node={allocation.gpus_per_node}"] if allocation.gpus_per_node else []
    return ["srun", f"--jobid={allocation.job_id}", f"--nodes={len(allocation.hosts)}",
            f"--ntasks={len(allocation.hosts)}", "--ntasks-per-node=1", *gpus,
            sys.executable, "-m", "transfer_scaling.train.launch", "--on-node", "--nproc", str(nproc),
            *trainer_args(spec, out)]


def exit_code_of(exitcode: int) -> int:
    """A process's exit status as a shell reports it (128 + signal number for a signal)."""
    return 128 - exitcode if exitcode < 0 else exitcode


def forward_to_trainers(signum: int, _frame: object) -> None:
    """Pass a stop signal on to the trainers (the agent's child processes); they checkpoint and exit 75."""
    import psutil  # installed with DeepSpeed

    for child in psutil.Process().children():
        child.send_signal(signum)


def run_agent(args: list[str]) -> int:
    """Run torchrun's agent in this process; return the exit code of the first trainer that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward_to_trainers)
    try:
        run(parse_args(args))
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        return exit_code_of(failure.exitcode)
    return 0


def launch(spec: Path, out: Path, nproc: int | None = None, on_node: bool = False,
           env: Mapping[str, str] | None = None) -> int:
    """Train ``spec`` into ``out`` on every process this job has; return the trainer's exit code."""
    env = os.environ if env is None else env
    allocation = slurm_allocation(env)
    per_node = processes_per_node(nproc, allocation, env)
    nodes = len(allocation.hosts) if allocation else 1
    if nodes > 1 and not on_node:
        return subprocess.run(srun_command(allocation, per_node, spec, out), check=False).returncode
    if nodes * per_node == 1:
        return train_main(trainer_args(spec, out))
    return run_agent(torchrun_args(per_node, allocation, spec, out))


def launch_logged(spec: Path, out: Path, nproc: int, log: Path) -> int:
    """Run the launcher as a child process writing every rank's output to ``log``; return its exit code.

    SIGTERM/SIGUSR1 reaching this process are passed on (SLURM may signal only the job's own process), and
    this process waits for the trainers' checkpoint instead of dying first and ending the job step.
    """
    command = [sys.executable, "-m", "transfer_scaling.train.launch", "--nproc", str(nproc), "--spec", str(spec),
               "--out", str(out)]
    with open(log, "a", encoding="utf-8") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        previous = {sig: signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
                    for sig in STOP_SIGNALS}
        try:
            return exit_code_of(child.wait())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one training spec on every process of this SLURM allocation (or one process).")
    parser.add_argument("--spec", type=Path, required=True, help="a run record (spec.json) or a bare trainer spec")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--nproc", type=int, default=None,
                        help="processes per node (default: one per GPU of the node, else 1)")
    parser.add_argument("--on-node", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        return launch(args.spec, args.out, args.nproc, args.on_node)
    except LaunchError as error:
        print(f"launch: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
