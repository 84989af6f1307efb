"""Data-parallel training on CPU ranks over MPI (two processes, no GPU): two
ranks follow one rank's trajectory, checkpoints move between world sizes, a
dead rank stops the run, and bad launches fail on every rank with one line."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import pyllmc
from pyllmc import checkpoint, distributed
from pyllmc.shards import write_shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num-layers", "1", "--num-heads", "2", "--channels", "32", "--max-seq-len", "64",
        "-B", "2", "-T", "32", "--lr", "3e-3", "--warmup-steps", "3", "--num-threads", "1",
        "--no-progress", "--sample-every", "0", "--print-every", "0", "--val-every", "5",
        "--val-steps", "3", "--checkpoint-every", "5", "--keep-last", "0",
        "--total-batch-size", "256", "--steps", "10", "--shuffle"]

needs_mpi = pytest.mark.skipif(
    distributed.find_mpirun() is None or not os.path.exists(os.path.join(REPO, "build", "libllmc_mpi.so")),
    reason="no MPI (mpirun and build/libllmc_mpi.so)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    # a few hundred distinct "words" so that the loss can fall
    words = rng.integers(0, 50257, size=(300, 4))
    stream = words[rng.integers(0, 300, size=8000)].ravel()
    write_shard(folder / "tiny_val_000000.bin", stream[:3000])
    write_shard(folder / "tiny_train_000001.bin", stream[3000:])
    with open(folder / "hellaswag.jsonl", "w") as f:  # 5 examples: an uneven split over 2 ranks
        for i in range(5):
            f.write(json.dumps({"ctx": f"A man opens the door number {i} and",
                                "endings": ["walks in.", "eats it.", "sings a song.", "flies."],
                                "label": i % 4}) + "\n")
    return ["--train-data", str(folder / "tiny_train_*.bin"),
            "--val-data", str(folder / "tiny_val_*.bin"), "--hellaswag-every", "5",
            "--hellaswag-data", str(folder / "hellaswag.jsonl")]


def env_with(**extra):
    env = distributed.mpi_environment()
    env["PYTHONPATH"] = REPO
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train(args, data, nproc=0, check=True, background=False, env=None, timeout=300):
    cmd = [sys.executable, "-m", "pyllmc.train", *TINY, *data, *map(str, args)]
    if nproc:
        cmd += ["--nproc-per-node", str(nproc)]
    env = env or env_with()
    if background:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def losses(out_dir):
    with open(os.path.join(out_dir, "main.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {(r["step"], k): r[k] for r in records
            for k in ("train_loss", "val_loss", "hellaswag_acc_norm", "hellaswag_acc") if k in r}


def final_params(out_dir, step=10):
    with pyllmc.Model.load(os.path.join(out_dir, f"model_{step:08d}.bin")) as m:
        return m.parameters()


def assert_same_trajectory(a, b, rtol=1e-5):
    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys()
    assert sum(k[1] == "hellaswag_acc_norm" for k in la) >= 2
    for key in la:
        assert abs(la[key] - lb[key]) <= rtol * abs(la[key]), (key, la[key], lb[key])
    np.testing.assert_allclose(final_params(a), final_params(b), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """Uninterrupted 10-step runs: one rank, two ranks, two ranks with ZeRO-1."""
    if distributed.find_mpirun() is None:
        pytest.skip("no mpirun")
    root = tmp_path_factory.mktemp("runs")
    out = {"r1": root / "r1", "r2": root / "r2", "r2z": root / "r2z"}
    train(["--out-dir", out["r1"]], data)
    train(["--out-dir", out["r2"]], data, nproc=2)
    train(["--out-dir", out["r2z"], "--zero", "1"], data, nproc=2)
    return out


@needs_mpi
@pytest.mark.parametrize("run", ["r2", "r2z"])
def test_two_ranks_follow_one_rank(runs, run):
    assert_same_trajectory(runs["r1"], runs[run])
    assert sorted(os.listdir(runs[run])) == sorted(os.listdir(runs["r1"]))  # one set of files


@needs_mpi
def test_the_default_total_batch_is_the_same_on_any_number_of_ranks(data, tmp_path):
    """Without --total-batch-size a step is one B x T batch, its rows split
    between the ranks: the same command gives the same run on 1 and 2 ranks."""
    default = ["--total-batch-size", 0, "-B", 4, "--steps", 6, "--val-every", 3,
               "--hellaswag-every", 3]
    one, two = tmp_path / "one", tmp_path / "two"
    train(["--out-dir", one, *default], data)
    proc = train(["--out-dir", two, *default], data, nproc=2)
    assert "1 micro-step(s) of 2x32 per rank, 128 tokens per step" in proc.stdout
    la, lb = losses(one), losses(two)
    assert la.keys() == lb.keys()
    for key in la:
        assert abs(la[key] - lb[key]) <= 1e-5 * abs(la[key]), (key, la[key], lb[key])
    odd = train(["--out-dir", tmp_path / "odd", *default, "-B", 3], data, nproc=2, check=False)
    assert odd.returncode == 1 and "-B that is a multiple of 2" in odd.stderr, odd.stderr


@needs_mpi
def test_zero1_is_bit_identical_to_zero0(runs):
    assert losses(runs["r2"]) == losses(runs["r2z"])
    for step in (5, 10):
        for part in ("model", "optimizer"):
            a, b = (checkpoint.paths(runs[r], step)[part] for r in ("r2", "r2z"))
            assert open(a, "rb").read() == open(b, "rb").read(), (step, part)


def resume_copy(src, dst):
    """A copy of a finished run as if it had stopped after step 5's checkpoint."""
    shutil.copytree(src, dst)
    checkpoint.remove(dst, 10)


@needs_mpi
@pytest.mark.parametrize("src, nproc, zero", [("r2z", 0, 0), ("r1", 2, 1), ("r2", 2, 1)])
def test_resume_on_another_world_size(runs, data, tmp_path, src, nproc, zero):
    out = tmp_path / "resumed"
    resume_copy(runs[src], out)
    proc = train(["--out-dir", out, "--resume", "--zero", zero], data, nproc=nproc)
    assert "resuming from step 5" in proc.stdout
    assert_same_trajectory(runs[src], out)


@needs_mpi
def test_resume_on_the_same_world_size_is_bit_identical(runs, data, tmp_path):
    out = tmp_path / "resumed"
    resume_copy(runs["r2z"], out)
    train(["--out-dir", out, "--resume", "--zero", "1"], data, nproc=2)
    assert losses(out) == losses(runs["r2z"])
    assert (out / "model_00000010.bin").read_bytes() == \
        (runs["r2z"] / "model_00000010.bin").read_bytes()


@needs_mpi
def test_llama_on_two_ranks_with_zero1_follows_one_rank_and_resumes_on_one(data, tmp_path):
    """The data-parallel path and ZeRO-1 take the Llama family unchanged."""
    llama = ["--family", "llama", "--num-heads", "4", "--num-kv-heads", "2", "--ffn-hidden", "48"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(["--out-dir", one, *llama], data)
    train(["--out-dir", two, "--zero", "1", *llama], data, nproc=2)
    assert_same_trajectory(one, two)
    resumed = tmp_path / "resumed"
    resume_copy(two, resumed)
    train(["--out-dir", resumed, "--resume", *llama], data)
    assert_same_trajectory(two, resumed)


def rank_pids(out_dir, rank):
    """Processes of the run writing to out_dir that MPI started as `rank`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if str(out_dir).encode() in cmdline and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            pids.append(int(pid))
    return pids


@needs_mpi
def test_a_killed_rank_stops_the_other_and_resume_finishes(data, tmp_path):
    out = tmp_path / "run"
    args = ["--out-dir", out, "--steps", 60, "--checkpoint-every", 3, "--keep-last", 2]
    proc = train(args, data, nproc=2, background=True)
    deadline = time.monotonic() + 120
    while not checkpoint.complete_steps(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert checkpoint.complete_steps(out), "no checkpoint within 120 s"
    victims = rank_pids(out, 1)
    assert victims, "rank 1 not found"
    os.kill(victims[0], signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(timeout=90)
    assert time.monotonic() - killed < 60
    assert proc.returncode != 0
    assert not rank_pids(out, 0), "rank 0 still running"
    done = train(["--out-dir", out, "--resume", "--steps", 60, "--checkpoint-every", 3,
                  "--keep-last", 2], data, nproc=2, timeout=600)
    assert "resuming from step" in done.stdout
    assert checkpoint.complete_steps(out)[-1] == 60


@needs_mpi
def test_ctrl_c_under_nproc_per_node_checkpoints(data, tmp_path):
    """The launcher passes Ctrl-C on to the ranks (not through mpirun, which
    would kill them): they finish the step, write a checkpoint, and rank 0
    says how to resume."""
    out = tmp_path / "run"
    proc = train(["--out-dir", out, "--steps", 100000, "--checkpoint-every", 0], data, nproc=2,
                  background=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (
            os.path.exists(out / "main.jsonl") and open(out / "main.jsonl").read().count("\n") > 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "prterun" not in err, err
    step = checkpoint.complete_steps(out)[-1]
    assert (f"interrupted (a stop request from the launcher) after step {step}" in err
            and f"Resume with: python -m pyllmc.train --out-dir {out} --resume" in err), err


@needs_mpi
def test_ranks_with_different_arguments_stop(data, tmp_path):
    common = ["-m", "pyllmc.train", *TINY, *data, "--out-dir", str(tmp_path / "o")]
    cmd = [*distributed.mpirun_command(1, [*common, "--lr", "1e-3"]),
           ":", "-np", "1", sys.executable, *common, "--lr", "2e-3"]
    proc = subprocess.run(cmd, env=env_with(), cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "started with different arguments" in proc.stderr, proc.stderr


@needs_mpi
def test_total_batch_not_divisible_between_ranks(data, tmp_path):
    proc = train(["--out-dir", tmp_path / "o", "--total-batch-size", 192], data, nproc=2,
                 check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("is not a multiple of B*T*ranks = 2*32*2 = 128") == 2, proc.stderr


def test_a_rank_alone_stops_at_the_rendezvous(data, tmp_path):
    port = distributed.free_port()
    for rank, expected in ((1, f"could not reach rank 0's rendezvous at 127.0.0.1:{port}"),
                           (0, f"rendezvous at 127.0.0.1:{port}: rank(s) [1] of 2 did not arrive")):
        env = env_with(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port)
        started = time.monotonic()
        proc = train(["--out-dir", tmp_path / "o", "--rendezvous-timeout", 2], data, env=env,
                     check=False)
        assert proc.returncode == 1 and expected in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and time.monotonic() - started < 30
        assert not os.path.exists(tmp_path / "o" / "main.jsonl")  # never trained alone


def test_cpu_ranks_without_mpi_refuse_to_train(data, tmp_path):
    """torchrun's variables on CPU: the ranks meet, then say MPI is needed."""
    port = distributed.free_port()
    procs = [train(["--out-dir", tmp_path / "o"], data, background=True,
                   env=env_with(RANK=r, WORLD_SIZE=2, LOCAL_RANK=r, MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=port)) for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1 and "talk over MPI" in err, err


# ---- the rendezvous alone (it only moves bytes) --------------------------------------------

def meet(world, digests, payload="cafe", timeout=10, port=None, secret=b"launch secret"):
    """Runs Rendezvous for ranks 0..world-1 in threads; returns their results."""
    port = port or distributed.free_port()
    results = {}

    def rank(r):
        me = distributed.Rank(r, world, r, "env", "127.0.0.1", port)
        try:
            results[r] = distributed.Rendezvous(me, "127.0.0.1", port, digests[r],
                                                lambda: payload, timeout, secret)
        except distributed.DistributedError as e:
            results[r] = e

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results


def test_rendezvous_hands_rank_0s_bytes_to_every_rank():
    results = meet(3, ["d"] * 3)
    assert [results[r].payload for r in range(3)] == ["cafe"] * 3
    for r in results.values():
        r.finish()


def test_rendezvous_refuses_ranks_that_disagree():
    results = meet(2, ["d", "other"])
    for r in (0, 1):
        assert isinstance(results[r], distributed.DistributedError)
        assert "rank 1" in str(results[r]) and "other arguments" in str(results[r])


def test_rendezvous_refuses_a_world_size_mismatch():
    port = distributed.free_port()
    errors = {}

    def rank(r, world):
        me = distributed.Rank(r, world, r, "env", "127.0.0.1", port)
        try:
            distributed.Rendezvous(me, "127.0.0.1", port, "d", lambda: "x", 5)
        except distributed.DistributedError as e:
            errors[r] = str(e)

    threads = [threading.Thread(target=rank, args=a) for a in ((0, 2), (1, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert "disagree on the world size" in errors[0] and "disagree on the world size" in errors[1]


def test_heartbeat_notices_a_rank_that_dies():
    results = meet(2, ["d", "d"])
    lost = threading.Event()
    results[0].watch(lambda message: lost.set())
    results[1].peers[0].close()  # rank 1 gone without saying goodbye
    assert lost.wait(5)
    calm = meet(2, ["d", "d"])
    quiet = threading.Event()
    calm[0].watch(lambda message: quiet.set())
    calm[1].finish()
    calm[0].finish()
    assert not quiet.wait(0.5)


def test_file_rendezvous(tmp_path):
    results = {}

    def rank(r):
        me = distributed.Rank(r, 2, r, "slurm")
        results[r] = distributed.file_rendezvous(me, str(tmp_path), "d", lambda: "beef", 10,
                                                 key=b"k")

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results == {0: "beef", 1: "beef"}
    with pytest.raises(distributed.DistributedError, match="other arguments"):
        distributed.file_rendezvous(distributed.Rank(1, 2, 1, "slurm"), str(tmp_path), "x",
                                    None, 1, key=b"k")
    # once all have joined rank 0 removes the file: a later launch waits for its own
    distributed.end_file_rendezvous(distributed.Rank(1, 2, 1, "slurm"), str(tmp_path))
    assert (tmp_path / "rendezvous.json").exists()
    distributed.end_file_rendezvous(distributed.Rank(0, 2, 0, "slurm"), str(tmp_path))
    assert not (tmp_path / "rendezvous.json").exists()
    with pytest.raises(distributed.DistributedError, match="no rendezvous file"):
        distributed.file_rendezvous(distributed.Rank(1, 2, 1, "slurm"), str(tmp_path), "d",
                                    None, 0.5, key=b"k")


def test_file_rendezvous_folder_per_slurm_job_step(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    assert distributed.rendezvous_file(str(tmp_path)) == str(tmp_path / "77.3" / "rendezvous.json")
    assert distributed.file_rendezvous(distributed.Rank(0, 2, 0, "slurm"), str(tmp_path), "d",
                                       lambda: "ab", 1) == "ab"
    assert (tmp_path / "77.3" / "rendezvous.json").exists()


# ---- hostile peers: a rank's secret is proven, never sent; bad messages are one-line errors --

def serve_in_thread(port, timeout=3, secret=b"launch secret"):
    """Rank 0 of 2 in a thread; returns (thread, result dict)."""
    result = {}

    def rank0():
        me = distributed.Rank(0, 2, 0, "env", "127.0.0.1", port)
        try:
            result["ok"] = distributed.Rendezvous(me, "127.0.0.1", port, "d", lambda: "cafe",
                                                  timeout, secret)
        except distributed.DistributedError as e:
            result["error"] = str(e)

    thread = threading.Thread(target=rank0)
    thread.start()
    return thread, result


def connect(port):
    deadline = time.monotonic() + 5
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_an_intruder_without_the_secret_gets_nothing_and_locks_no_one_out():
    port = distributed.free_port()
    thread, result = serve_in_thread(port, timeout=10)
    intruder = connect(port)
    nonce = json.loads(intruder.makefile().readline())["nonce"]
    hello = {"rank": 1, "world_size": 2, "digest": "d", "host": "x", "nonce": "n"}
    hello["proof"] = distributed._proof(b"a guess", "hello", nonce, hello)
    intruder.sendall(json.dumps(hello).encode() + b"\n")
    assert intruder.recv(100) == b""  # dropped, no payload
    me = distributed.Rank(1, 2, 1, "env", "127.0.0.1", port)
    real = distributed.Rendezvous(me, "127.0.0.1", port, "d", None, 10, b"launch secret")
    thread.join(15)
    assert real.payload == "cafe" and result["ok"].payload == "cafe"
    real.finish()
    result["ok"].finish()


SLOW = "slow"
HOSTILE_MESSAGES = {"list": b"[1]\n", "string": b'"x"\n', "no-proof": b'{"rank": 1}\n',
                    "binary": b"\xff\xfe\n", "deep": b"[" * 100000 + b"\n",
                    "endless": b"x" * (1 << 20), "slow": SLOW}


def send_hostile(sock, message):
    if message is SLOW:  # a byte every 50 ms, never a newline
        try:
            for _ in range(200):
                sock.sendall(b"x")
                time.sleep(0.05)
        except OSError:
            pass
    else:
        try:
            sock.sendall(message)
        except OSError:
            pass


@pytest.mark.parametrize("case", HOSTILE_MESSAGES)
def test_rank_0_survives_hostile_hellos(case):
    port = distributed.free_port()
    started = time.monotonic()
    thread, result = serve_in_thread(port, timeout=1)
    sock = connect(port)
    sender = threading.Thread(target=send_hostile, args=(sock, HOSTILE_MESSAGES[case]), daemon=True)
    sender.start()
    thread.join(10)
    sock.close()
    assert time.monotonic() - started < 5
    assert "rank(s) [1] of 2 did not arrive within 1 s" in result["error"], result
    if case != "slow":
        assert "refused 1 connection(s)" in result["error"], result


@pytest.mark.parametrize("case", HOSTILE_MESSAGES)
def test_a_rank_survives_a_hostile_rank_0(case):
    port = distributed.free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen(1)

        def fake_rank0():
            conn, _ = server.accept()
            if case in ("list", "string", "binary"):  # instead of the nonce
                send_hostile(conn, HOSTILE_MESSAGES[case])
            else:  # a nonce, then a bad answer to the hello
                conn.sendall(b'{"nonce": "abc"}\n')
                conn.makefile("rb").readline()
                send_hostile(conn, b'{"payload": "cafe", "proof": "00"}\n' if case == "no-proof"
                             else HOSTILE_MESSAGES[case])
            time.sleep(2)
            conn.close()

        threading.Thread(target=fake_rank0, daemon=True).start()
        me = distributed.Rank(1, 2, 1, "env", "127.0.0.1", port)
        started = time.monotonic()
        with pytest.raises(distributed.DistributedError) as error:
            distributed.Rendezvous(me, "127.0.0.1", port, "d", None, 1, b"launch secret")
        assert time.monotonic() - started < 3
        message = str(error.value)
        assert ("is not an llmc rank 0" in message or "gave no answer within 1 s" in message
                or "without proving the launch's secret" in message), message


def test_rank_0_listens_on_loopback_for_one_host(monkeypatch):
    monkeypatch.delenv("LLMC_RENDEZVOUS_BIND", raising=False)
    assert distributed.bind_address("127.0.0.1") == "127.0.0.1"
    assert distributed.bind_address("localhost") == "127.0.0.1"
    assert distributed.bind_address("::1") == "::1"
    assert distributed.bind_address("10.1.2.3") == ""  # several hosts: every interface
    assert distributed.bind_address("node7") == ""
    monkeypatch.setenv("LLMC_RENDEZVOUS_BIND", "10.1.2.3")
    assert distributed.bind_address("node7") == "10.1.2.3"


@pytest.mark.parametrize("case", ["fifo", "dev-zero", "stale", "list", "object", "binary"])
def test_file_rendezvous_waits_for_this_launchs_file(tmp_path, case):
    path = tmp_path / "rendezvous.json"
    if case == "fifo":
        os.mkfifo(path)
    elif case == "dev-zero":
        os.symlink("/dev/zero", path)
    elif case == "stale":  # a crashed launch's file: the same arguments, another key
        distributed.file_rendezvous(distributed.Rank(0, 2, 0, "env"), str(tmp_path), "d",
                                    lambda: "old", 1, key=b"the last launch")
    else:
        path.write_bytes({"list": b"[]", "object": b"{}", "binary": b"\xff"}[case])
    why = {"fifo": "is a FIFO", "dev-zero": "is a device", "stale": "is from another launch",
           "list": "is not a rendezvous file", "object": "is not a rendezvous file",
           "binary": "not a JSON message"}[case]
    me = distributed.Rank(1, 2, 1, "env")
    started = time.monotonic()
    with pytest.raises(distributed.DistributedError, match=f"within 1 s .*{why}"):
        distributed.file_rendezvous(me, str(tmp_path), "d", None, 1, key=b"this launch")
    assert time.monotonic() - started < 4


def test_file_rendezvous_needs_a_launch_key(tmp_path, monkeypatch):
    for name in ("LLMC_RENDEZVOUS_SECRET", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.DistributedError, match="export LLMC_RENDEZVOUS_SECRET"):
        distributed.file_rendezvous(distributed.Rank(0, 2, 0, "env"), str(tmp_path), "d",
                                    lambda: "x", 1)


def test_launcher_environments():
    assert distributed.from_environment({}) == distributed.Rank()
    mpi = distributed.from_environment({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8",
                                        "OMPI_COMM_WORLD_LOCAL_RANK": "1"})
    assert (mpi.rank, mpi.world_size, mpi.local_rank, mpi.launcher) == (3, 8, 1, "mpi")
    slurm = distributed.from_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "16",
                                          "SLURM_LOCALID": "5", "SLURM_STEP_ID": "0"})
    assert (slurm.rank, slurm.world_size, slurm.launcher) == (5, 16, "slurm")
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0"}
    assert not distributed.from_environment(batch_script).distributed
    env = distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                                        "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert (env.rank, env.master_addr, env.master_port, env.launcher) == (1, "node0", 29500, "env")
    torchrun = distributed.from_environment({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "n0",
                                             "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"})
    assert torchrun.master_port == 29501  # torchrun's own store holds 29500
    with pytest.raises(distributed.DistributedError, match="RANK=2 and WORLD_SIZE=2"):
        distributed.from_environment({"RANK": "2", "WORLD_SIZE": "2"})


# ---- the library's plan and errors ---------------------------------------------------------

def test_zero1_plans_less_memory_per_rank():
    config = pyllmc.Config(num_layers=2, num_heads=2, channels=64, max_seq_len=64)
    whole = pyllmc.Model.plan_memory(config, max_batch_size=2, max_seq_len=64, world_size=2)
    split = pyllmc.Model.plan_memory(config, max_batch_size=2, max_seq_len=64, world_size=2,
                                     zero_stage=1)
    n = 50304 * 64 + 64 * 64 + 2 * 12 * 64 * 64  # about the parameter count
    assert whole - split >= 0.9 * 4 * n  # half of 2 x 4 bytes of moments per parameter
    with pytest.raises(pyllmc.InvalidArgumentError, match="zero_stage = 1 shards"):
        pyllmc.Model.plan_memory(config, zero_stage=1)
    if pyllmc.cuda_available() or os.path.exists(os.path.join(REPO, "build", "libllmc_cuda.so")):
        d48 = [pyllmc.Model.plan_memory("d48", device="cuda", max_batch_size=16, max_seq_len=1024,
                                        recompute=1, world_size=w, zero_stage=z)
               for w, z in ((1, 0), (8, 0), (8, 1))]
        assert abs(d48[0] - d48[1]) < 1e6 and d48[1] > d48[2] + 8e9  # 12 of 14 B/param gone


def test_distributed_model_without_mpi_plugin_is_a_clear_error(tmp_path):
    shutil.copy(os.path.join(REPO, "build", "libllmc.so"), tmp_path / "libllmc.so")
    code = ("import pyllmc\n"
            "try:\n"
            "    pyllmc.Model.from_config(pyllmc.Config(num_layers=1, num_heads=2, channels=32,"
            " max_seq_len=32), world_size=2, rank=0)\n"
            "except pyllmc.UnsupportedError as e:\n"
            "    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(env_with(), LLMC_LIB=str(tmp_path / "libllmc.so")), timeout=60)
    assert "distributed mode needs MPI" in proc.stdout and "libllmc_mpi.so" in proc.stdout, \
        proc.stdout + proc.stderr
