"""A real single-node SLURM (Debian's slurm-wlm and munge) started for a test, in a temporary folder.

`make test` installs the packages where it can (root with apt-get; see tests/install_slurm.sh). Where SLURM
cannot start, `single_node` raises Unavailable with the reason, and the test skips saying it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class Unavailable(Exception):
    """SLURM cannot run here; the message says why."""


def _run(*argv: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    try:
        encoded = _run("munge", "-n")
        return encoded.returncode == 0 and _run("unmunge", input=encoded.stdout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munge() -> None:
    """munged as the munge user, with a random key if the package left none."""
    if _munge_works():
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(128))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    started = _run("runuser", "-u", "munge", "--", "/usr/sbin/munged")
    if started.returncode != 0 or not _munge_works():
        raise Unavailable(f"munged did not start: {started.stderr.strip() or started.stdout.strip()}")


def _config(folder: Path, host: str) -> str:
    cpus = os.cpu_count() or 1
    return "\n".join([
        "ClusterName=pipelinetest", f"SlurmctldHost={host}", "SlurmUser=root", "AuthType=auth/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "MpiDefault=none", "ReturnToService=2", f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        f"NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", "",
    ])


@contextmanager
def single_node(folder: Path) -> Iterator[dict[str, str]]:
    """slurmctld and slurmd on this machine; yields the environment (SLURM_CONF) that sbatch, squeue and
    scancel need. Stops both daemons afterwards."""
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged", "munge") if not shutil.which(tool)
               and not Path("/usr/sbin", tool).exists()]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise Unavailable("a test SLURM needs root (slurmd and munged run as root and munge)")
    _start_munge()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state").mkdir(exist_ok=True)
    (folder / "spool").mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, socket.gethostname().split(".")[0]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    try:
        for daemon in ("slurmctld", "slurmd"):
            daemons.append(subprocess.Popen([shutil.which(daemon) or f"/usr/sbin/{daemon}", "-D", "-f", str(conf)], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while "idle" not in _run("sinfo", "-h", "-o", "%T", env=env).stdout:
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                log = (folder / "slurmctld.log").read_text()[-2000:] if (folder / "slurmctld.log").exists() else ""
                raise Unavailable(f"the SLURM node did not come up idle; slurmctld.log ends: {log}")
            time.sleep(0.2)
        yield env
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
