"""A real single-node SLURM on this machine, for the dask-jobqueue tests (``tests/test_slurm.py``).

The session fixture ``slurm`` (``tests/conftest.py``) starts Debian's daemons directly (no systemd): a private ``munged``
(its own key and socket), ``slurmctld`` and ``slurmd`` for one node, this host, at 127.0.0.1, with a
fresh state and spool folder and free ports, all in one temporary folder; nothing of the machine's
own munge or SLURM set-up is read or changed. Clients find it through ``SLURM_CONF`` (set in
``os.environ`` while the fixture lives, so subprocesses and dask-jobqueue's ``sbatch`` calls inherit it).
Every daemon is stopped and the folder removed at the end. Where the packages are missing (``.ci/run``
installs them: ``apt-get install slurm-wlm munge``), the user is not root (slurmd starts jobs as
their owner) or a daemon does not come up, the tests skip and say why.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from processes import free_port, stop

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")


@dataclass
class Slurm:
    """A running single-node SLURM: its config, its daemons and a few client calls."""

    folder: Path
    conf: Path
    node: str
    partition: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _call(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True, timeout=30).stdout

    def jobs(self, state: str | None = None) -> list[str]:
        """Ids of the jobs in squeue: pending, running or completing, or in ``state`` (e.g. ``running``)."""
        return self._call("squeue", "-h", *(["-t", state] if state else []), "-o", "%i").split()

    def scancel(self, job_id: str) -> None:
        self._call("scancel", job_id)

    def node_state(self) -> str:
        return self._call("sinfo", "-h", "-n", self.node, "-o", "%T").strip()

    def listening(self) -> list[tuple[str, str, int]]:
        """(daemon, ip, port) of every socket the daemons listen on."""
        found = []
        for name, proc in self.processes.items():
            with_children = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for p in with_children:
                for c in p.net_connections("inet"):
                    if c.status == psutil.CONN_LISTEN:
                        found.append((name, c.laddr.ip, c.laddr.port))
        return found

    def logs(self, daemon: str = "*") -> str:
        """The ends of the daemons' logs (or of one daemon's), for messages."""
        files = sorted(self.folder.glob(f"{daemon}.out")) + sorted(self.folder.glob(f"{daemon}.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in files)


def _real_memory_mb() -> int:
    """5 % under what slurmd itself finds, so the node is never drained for having too little."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    return int(int(re.search(r"RealMemory=(\d+)", out).group(1)) * 0.95)


def _slurm_conf(folder: Path, node: str, ctld_port: int, slurmd_port: int) -> str:
    cpus = os.cpu_count() or 1
    return f"""\
ClusterName=cfnettest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
# loopback only: without NoCtldInAddrAny slurmctld listens on 0.0.0.0, without NoInAddrAny slurmd does
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no accounting, no mail
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/builtin
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_real_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for proc in reversed(list(processes.values())):  # slurmd, slurmctld, then munged
        stop(proc, timeout=15)


def _wait(condition, timeout: float, what: str, slurm: Slurm) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in slurm.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{slurm.logs(name)}")
        try:
            if condition():
                return
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not within {timeout:g} s\n{slurm.logs()}")


def _which(name: str) -> str | None:
    """The program ``name`` on PATH or in the sbin folders (where Debian puts the daemons)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def start_slurm() -> Iterator[Slurm]:
    """Start munged, slurmctld and slurmd; yield the :class:`Slurm`; stop them (a generator, for the fixture)."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("a single-node SLURM needs root here (slurmd starts jobs as their owner)")
    try:
        import dask_jobqueue
    except ImportError:
        pytest.skip("dask-jobqueue not installed: pip install 'dask-jobqueue>=0.9'")
    del dask_jobqueue
    # not under pytest's tmp_path: munged wants every folder above its socket to be searchable by all
    folder = Path(tempfile.mkdtemp(prefix="cfnet-slurm-"))
    folder.chmod(0o755)
    munge = folder / "munge"
    node = socket.gethostname().split(".")[0]
    slurm = Slurm(folder, folder / "slurm.conf", node, PARTITION)
    previous = os.environ.get("SLURM_CONF")
    logs = []

    def start(name: str, *argv: str) -> None:
        logs.append(open(folder / f"{name}.out", "ab"))
        slurm.processes[name] = subprocess.Popen([_which(name), *argv], stdout=logs[-1], stderr=subprocess.STDOUT, env=slurm.env)

    try:
        try:
            for sub in ("munge", "state", "spool"):
                (folder / sub).mkdir()
            key = munge / "munge.key"
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
            slurm.conf.write_text(_slurm_conf(folder, node, free_port(), free_port()))
            # -F / -D: in the foreground, so each pid is the daemon's own
            start("munged", "-F", f"--socket={munge}/munge.socket", f"--key-file={key}", f"--pid-file={munge}/munged.pid",
                  f"--seed-file={munge}/munged.seed", "--num-threads=2")
            _wait(lambda: (munge / "munge.socket").exists(), 10, "munged's socket", slurm)
            start("slurmctld", "-D", "-f", str(slurm.conf))
            start("slurmd", "-D", "-f", str(slurm.conf), "-N", node)
            _wait(lambda: slurm.node_state() == "idle", 30, f"node {node} idle in sinfo", slurm)
        except (RuntimeError, OSError, subprocess.SubprocessError, AttributeError) as exc:
            pytest.skip(f"a single-node SLURM could not be started here: {exc}")
        os.environ["SLURM_CONF"] = str(slurm.conf)
        yield slurm
    finally:
        _cancel_all(slurm)
        _stop(slurm.processes)
        for log in logs:
            log.close()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def _cancel_all(slurm: Slurm) -> None:
    """Cancel every job of this SLURM and wait for them to end; kill whatever job step outlives that.

    slurmstepd (one per job, a child of slurmd that detaches from it) keeps running when slurmd
    stops, so jobs are ended first; a step is recognised by the SLURM_CONF it inherited from our slurmd.
    """
    if slurm.processes.get("slurmctld") is not None and slurm.processes["slurmctld"].poll() is None:
        try:
            subprocess.run(["scancel", "--user", "root"], env=slurm.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 20
            while slurm.jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
        except (subprocess.SubprocessError, OSError):
            pass
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] == "slurmstepd" and p.environ().get("SLURM_CONF") == str(slurm.conf):
                for q in [*p.children(recursive=True), p]:
                    q.kill()
        except psutil.Error:
            continue
