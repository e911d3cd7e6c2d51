"""A real one-node Slurm cluster on localhost for the cluster tests and the overhead benchmark:
munged, slurmctld and slurmd (Debian's slurm-wlm 22.05) with a `cpu` and a `gpu` partition and
two fake GPU gres devices. Needs root and a machine without a Slurm of its own: the config goes
to /etc/slurm (job steps find it only there: Snakemake's job-step executor drops SLURM_CONF) and is
removed afterwards; state and logs live in a temporary folder; the daemons are stopped by their
PIDs only."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

SLURM_CONF = """\
ClusterName=polarmap-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MinJobAge=600
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerParameters=sched_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:fake:2 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONF_DIR = Path("/etc/slurm")


def available() -> str | None:
    """Why a local cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if (CONF_DIR / "slurm.conf").exists():
        return f"{CONF_DIR / 'slurm.conf'} exists: this machine has a Slurm of its own"
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (bash .ci/setup installs them)" if missing else None


@contextmanager
def local_cluster():
    """Start the cluster; yields the environment (SLURM_CONF) for commands that use it. Its
    folder is made under /tmp, which the munge user can reach (pytest's tmp_path it cannot)."""
    root = Path(tempfile.mkdtemp(prefix="polarmap-slurm-"))
    for folder in ("state", "spool", "munge", "gpus"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # munged runs as the munge user and must reach its socket
    shutil.chown(root / "munge", "munge", "munge")
    os.chmod(root / "munge", 0o711)
    key = root / "munge/munge.key"
    key.write_bytes(os.urandom(128))
    shutil.chown(key, "munge", "munge")
    os.chmod(key, 0o400)
    munge_socket = root / "munge/munge.socket"
    gpus = [root / "gpus" / f"fake{i}" for i in range(2)]
    for device in gpus:
        if not device.exists():
            os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, as gres.conf needs
    host = socket.gethostname()
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    if reason := available():
        raise RuntimeError(f"cannot start a local Slurm: {reason}")
    CONF_DIR.mkdir(exist_ok=True)
    conf = CONF_DIR / "slurm.conf"
    processes = []
    try:
        conf.write_text(SLURM_CONF.format(host=host, root=root, munge_socket=munge_socket, cpus=os.cpu_count(), memory_mb=memory_mb,
                                          ctld_port=_free_port(), d_port=_free_port()))
        (CONF_DIR / "gres.conf").write_text(f"NodeName={host} Name=gpu Type=fake File={root}/gpus/fake[0-1]\n")
        env = {**os.environ, "SLURM_CONF": str(conf)}
        processes.append(subprocess.Popen(
            ["runuser", "-u", "munge", "--", "munged", "--foreground", f"--key-file={key}", f"--socket={munge_socket}",
             f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log", f"--seed-file={root}/munge/seed", "--force"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: munge_socket.exists(), "munged", root / "munge/munged.log")
        processes.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        processes.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def idle():
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.split()
            return bool(state) and all(s == "idle" for s in state)

        _wait(idle, "slurmd", root / "slurmd.log", timeout=60)
        yield env
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        for name in ("slurm.conf", "gres.conf"):
            (CONF_DIR / name).unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def _wait(ready, name, log, timeout=30):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{name} did not come up in {timeout} s; its log ends:\n{tail}")
        time.sleep(0.2)


def jobs(env) -> list[dict]:
    """Every job the controller remembers (MinJobAge keeps finished ones), as key=value dicts."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], env=env, capture_output=True, text=True).stdout
    return [dict(field.split("=", 1) for field in line.split() if "=" in field) for line in out.splitlines() if line.strip()]
