"""Issue 10: hostile inputs and callers. Each test names the item it keeps
fixed: crafted headers whose sizes wrapped (1), FIFOs (2), non-finite
hyper-parameters (3), values cut at the ctypes boundary (4), threads (5),
non-finite or impossible loaded state (6), memory (7), damaged checkpoints
on resume (8), HellaSwag jsonl (9), and the header's own promises. Cases that
crashed or hung before run in child processes with a timeout."""
import ctypes
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import pyllmc
from pyllmc import _lib, checkpoint, hellaswag, shards
from pyllmc._lib import lib

REPO = Path(__file__).resolve().parent.parent
TINY = pyllmc.Config(max_seq_len=16, vocab_size=64, num_layers=2, num_heads=2, channels=16)
X = np.arange(8, dtype=np.int32).reshape(2, 4) % 64
Y = (X + 1) % 64


def child(code, timeout=60, limit_as=None):
    """Runs code in a fresh Python (with an address-space limit if asked);
    returns (returncode, output). A hang fails the test, naming the code."""
    prelude = ""
    if limit_as:
        prelude = ("import resource; resource.setrlimit(resource.RLIMIT_AS, "
                   f"({limit_as}, {limit_as}))\n")
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def model():
    with pyllmc.Model.from_config(TINY, max_batch_size=2, max_seq_len=4, num_threads=1) as m:
        yield m


@pytest.fixture
def saved(tmp_path, model):
    """(model file, optimizer file) of the tiny model after one step."""
    model.step(X, Y, lr=1e-3)
    model.save(tmp_path / "model.bin")
    model.save_optimizer(tmp_path / "optim.bin")
    return tmp_path / "model.bin", tmp_path / "optim.bin"


def header_file(path, fields, size=1024):
    path.write_bytes(struct.pack(f"<{len(fields)}i", *fields) + bytes(size - 4 * len(fields)))
    return path


# ---- 1: size arithmetic ------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    [20240326, 3, 1, 50257, 3872085, 1, 2**24, 16771756],      # parameter count wraps to 0
    [20240326, 3, 1024, 50257, 14188543, 1, 2**24, 2**24],
    [20240326, 5, 1024, 50257, 14188543, 1, 2**24, 2**24],
    [20240326, 3, 98315, 50257, 14188543, 1, 2**24, 2**24],
    [20240326, 3, 98315, 2**24, 14188543, 16, 2**24, 2**24],
])
def test_crafted_headers_are_refused(tmp_path, fields):
    path = header_file(tmp_path / "crafted.bin", fields)
    rc, out = child(f"""
        import numpy as np, pyllmc
        try:
            m = pyllmc.Model.load({str(path)!r}, max_batch_size=1, max_seq_len=1)
            m.eval(np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32))
            print("LOADED")
        except pyllmc.FileFormatError as e:
            print("REFUSED", e)
    """)
    assert rc == 0 and "REFUSED" in out, out
    assert str(path) in out


def test_file_size_must_be_exact(saved):
    model_file, _ = saved
    with open(model_file, "ab") as f:
        f.write(b"\0")
    with pytest.raises(pyllmc.FileFormatError, match="needs exactly"):
        pyllmc.Model.load(model_file)


def test_plans_beyond_the_limits_are_refused():
    with pytest.raises(pyllmc.InvalidArgumentError, match="tokens per micro-batch"):
        pyllmc.Model.from_config(pyllmc.Config(max_seq_len=2**20, num_layers=1, num_heads=1,
                                               channels=8, vocab_size=64), max_batch_size=64)
    with pytest.raises(pyllmc.InvalidArgumentError, match="parameters"):
        pyllmc.Model.from_config(pyllmc.Config(num_layers=2**24, channels=2**12, num_heads=1))


# ---- 2: FIFOs and other non-files -------------------------------------------------------

def test_fifos_are_refused_by_every_loader(tmp_path, saved):
    fifo = tmp_path / "f.bin"
    os.mkfifo(fifo)
    jsonl_fifo = tmp_path / "f.jsonl"
    os.mkfifo(jsonl_fifo)
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    os.mkfifo(out_dir / "state_00000002.json")
    rc, out = child(f"""
        import pyllmc
        from pyllmc import checkpoint, hellaswag, shards
        model = pyllmc.Model.load({str(saved[0])!r})
        calls = {{
            "Model.load": lambda: pyllmc.Model.load({str(fifo)!r}),
            "Config.from_file": lambda: pyllmc.Config.from_file({str(fifo)!r}),
            "load_optimizer": lambda: model.load_optimizer({str(fifo)!r}),
            "shard header": lambda: shards.read_shard_header({str(fifo)!r}),
            "hellaswag bin": lambda: hellaswag.load_examples({str(fifo)!r}),
            "hellaswag jsonl": lambda: hellaswag.load_examples({str(jsonl_fifo)!r}),
            "checkpoint state": lambda: checkpoint.load_state({str(out_dir)!r}, 2),
        }}
        for name, call in calls.items():
            try:
                call()
                print(name, "LOADED")
            except (pyllmc.LlmcError, shards.ShardError, hellaswag.DataError,
                    checkpoint.CheckpointError) as e:
                print(name, "REFUSED", e)
    """, timeout=30)
    assert rc == 0, out
    assert out.count("REFUSED") == 7 and "LOADED" not in out, out
    assert "not a regular file" in out and "is a FIFO" in out


def test_fifo_on_the_command_lines(tmp_path):
    fifo = tmp_path / "f.bin"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for cmd in ([sys.executable, "-m", "pyllmc.train", "--model", str(fifo), "--out-dir",
                 str(tmp_path / "out"), "--steps", "1", "--no-progress"],
                [sys.executable, "evals/hellaswag.py", "model.bin", "--data", str(fifo)]):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "error:" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and str(fifo) in proc.stderr


# ---- 3: hyper-parameters ------------------------------------------------------------------

@pytest.mark.parametrize("hp", [dict(lr=float("inf")), dict(lr=1e40), dict(lr=float("nan")),
                                dict(lr=-1e-3), dict(lr=1e-3, weight_decay=float("inf")),
                                dict(lr=1e-3, weight_decay=-1.0), dict(lr=1e-3, eps=0.0),
                                dict(lr=1e-3, beta1=1.0), dict(lr=1e-3, beta2=float("nan")),
                                dict(lr=1e-3, grad_clip=float("inf")), dict(lr="0.1")])
def test_bad_hyper_parameters_are_refused_and_change_nothing(model, hp):
    before = model.parameters()
    with pytest.raises(pyllmc.InvalidArgumentError):
        model.step(X, Y, **hp)
    assert np.array_equal(model.parameters(), before) and model.step_count == 0
    model.step(X, Y, lr=1e-3)  # still usable
    assert model.step_count == 1


def test_hyper_parameters_are_checked_by_the_library_too(model):
    model.backward(X, Y)
    hp = _lib.AdamWStruct(lr=float("inf"), beta1=0.9, beta2=0.95, eps=1e-8)
    status = lib.llmc_update(model._handle, ctypes.byref(hp), None)
    assert status == 1 and b"lr=inf" in lib.llmc_last_error()


# ---- 4: the ctypes boundary ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(max_batch_size=2**32 + 2), "max_batch_size"), (dict(max_seq_len=2**32 + 4), "max_seq_len"),
    (dict(seed=-1), "seed"), (dict(seed=2**70), "seed"), (dict(num_threads=2**31), "num_threads"),
    (dict(max_batch_size=2.5), "max_batch_size"),
])
def test_integers_are_checked_before_they_cross(kwargs, name):
    with pytest.raises(pyllmc.InvalidArgumentError, match=name):
        pyllmc.Model.from_config(TINY, **kwargs)


def test_config_integers_are_checked():
    with pytest.raises(pyllmc.InvalidArgumentError, match="channels"):
        pyllmc.Model.from_config(pyllmc.Config(channels=2**32 + 16, num_heads=1))


def test_nul_in_a_path_is_refused(saved, model, tmp_path):
    model_file, _ = saved
    with pytest.raises(pyllmc.InvalidArgumentError, match="NUL"):
        pyllmc.Model.load(f"{model_file}\0junk")
    with pytest.raises(pyllmc.InvalidArgumentError, match="NUL"):
        model.save(tmp_path / "out.bin\0junk")
    assert not (tmp_path / "out.bin").exists()


# ---- 5: threads ---------------------------------------------------------------------------

def test_concurrent_evals_give_the_single_threaded_results(model):
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 64, (2, 4)) for _ in range(8)]
    expected = [model.eval(x, (x + 1) % 64) for x in batches]
    results, errors = {}, []

    def work(t):
        try:
            for _ in range(20):
                for i, x in enumerate(batches):
                    results.setdefault((t, i), set()).add(model.eval(x, (x + 1) % 64))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for (t, i), values in results.items():
        assert values == {expected[i]}, (t, i, values)


def test_the_library_lock_alone_serializes_calls(model):
    # straight through ctypes, without pyllmc.Model's own lock: the C mutex
    # must keep two evals from sharing the activation buffers
    x, y = np.ascontiguousarray(X), np.ascontiguousarray(Y)
    i32 = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
    expected = model.eval(x, y)
    seen, statuses = set(), []

    def work():
        for _ in range(200):
            loss = ctypes.c_float()
            statuses.append(lib.llmc_eval(model._handle, i32(x), i32(y), 2, 4, ctypes.byref(loss),
                                          None))
            seen.add(loss.value)

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert set(statuses) == {0} and seen == {expected}


def test_step_and_eval_in_two_threads(model):
    stop = threading.Event()
    losses = []

    def evaluate():
        while not stop.is_set():
            losses.append(model.eval(X, Y))

    t = threading.Thread(target=evaluate)
    t.start()
    for _ in range(30):
        model.step(X, Y, lr=1e-2)
    stop.set()
    t.join()
    assert model.step_count == 30 and losses and np.all(np.isfinite(losses))


def test_close_while_another_thread_steps(model):
    errors = []

    def train():
        try:
            for _ in range(200):
                model.step(X, Y, lr=1e-3)
        except pyllmc.InvalidArgumentError as e:  # closed under it: the clean way to stop
            errors.append(e)

    t = threading.Thread(target=train)
    t.start()
    model.close()
    t.join()
    assert all("closed" in str(e) for e in errors)
    with pytest.raises(pyllmc.InvalidArgumentError, match="closed"):
        model.eval(X, Y)


# ---- 6: loaded state ----------------------------------------------------------------------

def optimizer_with(path, out, index, value, second=False):
    """A copy of an optimizer file with one moment set to value."""
    data = bytearray(Path(path).read_bytes())
    n = (len(data) - 1024) // 8
    offset = 1024 + 4 * (index + (n if second else 0))
    data[offset:offset + 4] = struct.pack("<f", value)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("value, second, message", [
    (float("nan"), False, "first moment of tensor wte holds a NaN at element 5"),
    (float("inf"), True, "second moment of tensor wte holds an infinity at element 5"),
    (-1.0, True, "second moment of tensor wte holds a negative value at element 5"),
])
def test_damaged_moments_are_refused(saved, model, tmp_path, value, second, message):
    bad = optimizer_with(saved[1], tmp_path / "bad.bin", 5, value, second)
    before = model.parameters()
    with pytest.raises(pyllmc.FileFormatError, match=message):
        model.load_optimizer(bad)
    model.step(X, Y, lr=1e-3)
    assert np.all(np.isfinite(model.parameters())) and not np.array_equal(model.parameters(), before)


def test_impossible_step_count_is_refused(saved, model, tmp_path):
    data = bytearray(saved[1].read_bytes())
    data[32:40] = struct.pack("<q", 2**63 - 1)
    (tmp_path / "bad.bin").write_bytes(bytes(data))
    with pytest.raises(pyllmc.FileFormatError, match="step count"):
        model.load_optimizer(tmp_path / "bad.bin")
    assert model.step_count == 1


def test_non_finite_weights_are_refused_naming_the_tensor(saved, model, tmp_path):
    data = bytearray(saved[0].read_bytes())
    c = TINY.channels
    # ln1w is the third tensor: after wte (Vp x C) and wpe (maxT x C); layer 1, element 3
    vp = (TINY.vocab_size + 127) // 128 * 128
    index = vp * c + TINY.max_seq_len * c + c + 3
    data[1024 + 4 * index:1024 + 4 * index + 4] = struct.pack("<f", float("nan"))
    (tmp_path / "bad.bin").write_bytes(bytes(data))
    with pytest.raises(pyllmc.FileFormatError, match=r"tensor ln1w \(layer 1\) holds a NaN at element 3"):
        pyllmc.Model.load(tmp_path / "bad.bin")


# ---- 7: memory ----------------------------------------------------------------------------

GIB = 2**30
# AddressSanitizer reserves terabytes of address space for its shadow memory
needs_address_space_limit = pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""), reason="RLIMIT_AS cannot work under ASan")


@needs_address_space_limit
def test_model_too_big_for_the_address_space_is_refused():
    # 2^20 layers of C=8: 3.7 GB of parameters under a 3 GiB limit
    rc, out = child("""
        import pyllmc
        try:
            pyllmc.Model.from_config(pyllmc.Config(num_layers=2**20, num_heads=1, channels=8,
                                                   vocab_size=64, max_seq_len=8))
            print("CREATED")
        except pyllmc.OutOfMemoryError as e:
            print("REFUSED", e)
    """, limit_as=3 * GIB, timeout=120)
    assert rc == 0 and "REFUSED" in out and "out of host memory" in out, out


@needs_address_space_limit
def test_loading_a_file_too_big_for_the_limit_is_refused(tmp_path):
    # a 1.6 GB fp32 model (2 layers of C=4096) under a limit that leaves 1 GiB: refused, not killed
    path = tmp_path / "big.bin"
    maxT, V, L, C, Vp = 8, 64, 2, 4096, 128
    n = Vp * C + maxT * C + L * (12 * C * C + 13 * C) + 2 * C
    with open(path, "wb") as f:
        f.write(struct.pack("<8i", 20240326, 3, maxT, V, L, 1, C, Vp) + bytes(1024 - 32))
        f.truncate(1024 + 4 * n)  # sparse: costs no disk
    rc, out = child(f"""
        import resource, pyllmc
        pyllmc.Config.preset("d12")  # the library loaded before the limit is measured
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, used + 2**30))
        try:
            pyllmc.Model.load({str(path)!r}, max_batch_size=1, max_seq_len=1, num_threads=1)
            print("LOADED")
        except pyllmc.OutOfMemoryError as e:
            print("REFUSED", e)
    """, timeout=120)
    assert rc == 0 and "REFUSED" in out, out


def test_loading_needs_about_one_copy_of_the_model(tmp_path):
    # 4 x 8.6M floats: with a whole temporary copy the peak would grow by ~2x the file
    config = pyllmc.Config(max_seq_len=64, vocab_size=50257, num_layers=2, num_heads=2, channels=128)
    path = tmp_path / "m.bin"
    with pyllmc.Model.from_config(config, max_batch_size=1, max_seq_len=1, num_threads=1) as m:
        m.save(path)
    size = path.stat().st_size
    rc, out = child(f"""
        import resource, pyllmc
        pyllmc.Config.preset("d12")  # the library and BLAS loaded before the baseline
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        m = pyllmc.Model.load({str(path)!r}, max_batch_size=1, max_seq_len=1, num_threads=1)
        print("GREW", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    """)
    assert rc == 0, out
    grew = int(out.split("GREW")[1].split()[0])
    assert grew < 1.4 * size, (grew, size)


# ---- 8: resume from damaged checkpoints ---------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ('{"step": 4, "data": {"epo', "unreadable"), ("", "unreadable"), ("[]", "JSON object"),
    ('{"step": 4, "data": {"epoch": 0, "shard": 0, "window": 1}, "args": {}}', "recent_losses"),
    ('{"step": 4, "data": {"epoch": 0, "shard": 0, "window": -3}, "recent_losses": [], "args": {}}',
     "data position"),
])
def test_damaged_state_is_named(tmp_path, text, problem):
    (tmp_path / "state_00000004.json").write_text(text)
    with pytest.raises(checkpoint.CheckpointError, match=problem):
        checkpoint.load_state(tmp_path, 4)


RUN = ["--num-layers", "1", "--num-heads", "2", "--channels", "16", "--max-seq-len", "16",
       "-B", "2", "-T", "8", "--num-threads", "1", "--no-progress", "--val-every", "0",
       "--sample-every", "0", "--checkpoint-every", "2"]


def train(out_dir, data, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pyllmc.train", *RUN, "--out-dir", str(out_dir),
                           "--train-data", str(data), *map(str, args)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("damage", ["state", "model", "optimizer"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    data = tmp_path / "train.bin"
    shards.write_shard(data, np.random.default_rng(0).integers(0, 256, 5000))
    out = tmp_path / "out"
    first = train(out, data, "--steps", 4)
    assert first.returncode == 0, first.stderr
    assert checkpoint.complete_steps(out) == [2, 4]
    part = checkpoint.paths(out, 4)[damage]
    if damage == "state":
        Path(part).write_text('{"step": 4, "data": [')
    else:  # truncated, its DONE marker still there
        with open(part, "r+b") as f:
            f.truncate(os.path.getsize(part) // 2)
    (out / "main.log.tmp.12345").write_text("a rewrite killed half way")
    resumed = train(out, data, "--steps", 6, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint of step 4 is damaged" in resumed.stderr and "Traceback" not in resumed.stderr
    assert "resuming from step 2" in resumed.stdout
    assert not (out / "main.log.tmp.12345").exists()
    assert checkpoint.complete_steps(out)[-1] == 6


# ---- 9: HellaSwag jsonl -------------------------------------------------------------------

RECORD = {"ctx": "A man is on a roof. He", "endings": ["a", "b", "c", "d"], "label": 1}


@pytest.mark.parametrize("line, problem", [
    (json.dumps({**RECORD, "label": "²"}), "'label'"),
    (json.dumps({**RECORD, "label": "7" * 5001}), "'label'"),
    (json.dumps(RECORD).replace('"label": 1', '"label": ' + "7" * 5001), "not a HellaSwag record"),
    ('{"ctx": ' + "[" * 100000 + "]" * 100000 + "}", "RecursionError"),
], ids=["superscript-two", "5001-digit-string", "5001-digit-number", "deep-nesting"])
def test_bad_jsonl_lines_are_data_errors(tmp_path, line, problem):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + line + "\n")
    with pytest.raises(hellaswag.DataError, match=f"{path}:2: .*{problem}"):
        hellaswag.load_examples(path)
    proc = subprocess.run([sys.executable, "evals/hellaswag.py", "model.bin", "--data", str(path)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {path}:2:"), proc.stderr


# ---- the header's promises ----------------------------------------------------------------

def test_status_strings():
    assert lib.llmc_status_string(0) == b"ok"
    assert lib.llmc_status_string(4) == b"out of memory"
    assert lib.llmc_status_string(99) == b"unknown status"


def test_reserved_options_must_be_zero():
    options = lib.llmc_default_options()
    options.reserved[3] = 1
    handle = ctypes.c_void_p()
    status = lib.llmc_init(ctypes.byref(TINY._to_struct()), ctypes.byref(options),
                           ctypes.byref(handle))
    assert status == 1 and handle.value is None
    assert b"reserved[3] = 1" in lib.llmc_last_error()


# ---- temporary files of atomic writes -------------------------------------------------------

def test_planted_temporary_files_are_never_written_through(tmp_path, monkeypatch):
    """write_atomic creates its temporary file new (O_EXCL|O_NOFOLLOW) under
    a random name: a symlink or FIFO planted there is skipped, not followed."""
    from pyllmc import files
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "out.json"
    names = iter(["planted", "planted", "fifo", "fresh"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    os.symlink(victim, f"{target}.tmp.planted")
    os.mkfifo(f"{target}.tmp.fifo")
    files.write_atomic(target, [b"new"])
    assert target.read_bytes() == b"new" and victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.json", "out.json.tmp.fifo", "out.json.tmp.planted", "victim"]
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "planted")
    with pytest.raises(FileExistsError):
        files.write_atomic(target, [b"newer"])
    assert target.read_bytes() == b"new" and victim.read_bytes() == b"precious"


def test_the_library_writer_ignores_planted_names(tmp_path):
    """The library's temporary names are random too: files planted under the
    old predictable name (PATH.tmp.PID) or any other are left alone."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    rc, out = child(f"""
        import os, pyllmc
        path = {str(tmp_path / "model.bin")!r}
        os.symlink({str(victim)!r}, f"{{path}}.tmp.{{os.getpid()}}")
        os.mkfifo(f"{{path}}.tmp.{{os.getpid() + 1}}")
        with pyllmc.Model.from_config(pyllmc.Config(max_seq_len=8, vocab_size=32, num_layers=1,
                                                    num_heads=1, channels=8)) as m:
            m.save(path)
            m.save_optimizer(path + ".optim")
        print(sorted(os.listdir(os.path.dirname(path))))
    """, timeout=60)
    assert rc == 0, out
    assert victim.read_bytes() == b"precious"
    names = eval(out.strip().splitlines()[-1])
    assert [n for n in names if ".tmp." in n and not os.path.islink(tmp_path / n)
            and not stat_is_fifo(tmp_path / n)] == []
    assert "model.bin" in names and "model.bin.optim" in names


def stat_is_fifo(path):
    import stat
    return stat.S_ISFIFO(os.lstat(path).st_mode)


# ---- resume never guesses: damaged run folders end in one line ------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step run (checkpoints at 2 and 4) and its training data."""
    root = tmp_path_factory.mktemp("run")
    data = root / "train.bin"
    shards.write_shard(data, np.random.default_rng(0).integers(0, 256, 5000))
    first = train(root / "out", data, "--steps", 4, "--keep-last", 1)
    assert first.returncode == 0, first.stderr
    return root / "out", data


def edit_state(out, change):
    path = Path(checkpoint.paths(out, 4)["state"])
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def set_arg(name, value):
    return lambda state: state["args"].update({name: value})


def set_data(name, value):
    return lambda state: state["data"].update({name: value})


DAMAGED = {  # case: (damage to the copied run folder, what the one line says)
    "lr-null": (lambda out: edit_state(out, set_arg("lr", None)), "setting --lr is None"),
    "lr-string": (lambda out: edit_state(out, set_arg("lr", "0.001")), "setting --lr is '0.001'"),
    "steps-float": (lambda out: edit_state(out, set_arg("steps", 4.5)), "setting --steps is 4.5"),
    "shuffle-int": (lambda out: edit_state(out, set_arg("shuffle", 1)), "setting --shuffle is 1"),
    "schedule-unknown": (lambda out: edit_state(out, set_arg("lr_schedule", "step")),
                         "setting --lr-schedule is 'step'"),
    "shard-99": (lambda out: edit_state(out, set_data("shard", 99)), "does not fit 1 shard(s)"),
    "window-far": (lambda out: edit_state(out, set_data("window", 10 ** 6)),
                   "shard 0 of this epoch has"),
    "epoch-1e30": (lambda out: edit_state(out, set_data("epoch", 10 ** 30)),
                   "does not fit 1 shard(s)"),
    "epoch-wrong": (lambda out: edit_state(out, set_data("epoch", 3)),
                    "the training data changed since this checkpoint"),
    "rebase-bad": (lambda out: edit_state(out, lambda s: s.update(lr_rebase=[9, "x"])),
                   "'lr_rebase' is [9, 'x']"),
    "main.log-fifo": (lambda out: (os.remove(out / "main.log"), os.mkfifo(out / "main.log")),
                      "main.log: is a FIFO"),
}
LOGS = {  # damaged logs: the run goes on, dropping the damaged lines
    "main.log-utf8": ("main.log", b"s:\xff\xfe trl:1.0\n"),
    "main.jsonl-list": ("main.jsonl", b"[1]\n"),
    "main.jsonl-huge-step": ("main.jsonl", b'{"step": 1e999}\n'),
    "main.jsonl-string-step": ("main.jsonl", b'{"step": "1"}\n'),
}


def copy_run(finished_run, tmp_path):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(finished_run[0], out)
    return out


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_run_folders_are_one_line_errors(finished_run, tmp_path, case):
    damage, message = DAMAGED[case]
    out = copy_run(finished_run, tmp_path)
    damage(out)
    proc = train(out, finished_run[1], "--steps", 6, "--resume", timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") <= 2, proc.stderr  # the error (and a damaged-state warning)
    assert checkpoint.complete_steps(out) == [4]  # nothing trained from a guess


@pytest.mark.parametrize("case", LOGS)
def test_damaged_log_lines_are_dropped(finished_run, tmp_path, case):
    name, line = LOGS[case]
    out = copy_run(finished_run, tmp_path)
    with open(out / name, "ab") as f:
        f.write(line)
    proc = train(out, finished_run[1], "--steps", 6, "--resume", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert line not in (out / name).read_bytes()
    assert checkpoint.complete_steps(out) == [6]


def test_resume_without_a_checkpoint_is_an_error(tmp_path, finished_run):
    data = finished_run[1]
    for folder, message in [(tmp_path / "typo", "typo is not a folder"),
                            (tmp_path, "holds no checkpoint")]:
        proc = train(folder, data, "--resume", timeout=60)
        assert proc.returncode == 1 and message in proc.stderr and "--start-if-empty" in \
            proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    # a first save cut short: the run's files are there, but no DONE marker
    out = copy_run(finished_run, tmp_path / "cut")
    os.remove(checkpoint.paths(out, 4)["done"])
    proc = train(out, data, "--resume", timeout=60)
    assert proc.returncode == 1 and "without their DONE marker" in proc.stderr, proc.stderr
    started = train(tmp_path / "new", data, "--resume", "--start-if-empty", "--steps", 2,
                    timeout=60)
    assert started.returncode == 0 and checkpoint.complete_steps(tmp_path / "new") == [2]


def curve_of(out):
    timing = ("ms", "tokens_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (out / "main.jsonl").read_text().splitlines()]


def interrupt_when_logged(cmd, out, lines, sig, env=None):
    """Starts cmd, sends sig once main.jsonl has `lines` lines; returns (rc, stderr)."""
    import time
    proc = subprocess.Popen(cmd, cwd=REPO, env=env or dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "main.jsonl").exists() and \
                (out / "main.jsonl").read_text().count("\n") >= lines:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_and_checkpoints(tmp_path, finished_run, sig):
    import signal
    data = finished_run[1]
    straight = tmp_path / "straight"
    assert train(straight, data, "--steps", 40, "--checkpoint-every", 0).returncode == 0
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pyllmc.train", *RUN, "--out-dir", str(out), "--train-data",
           str(data), "--steps", "40", "--checkpoint-every", "0"]
    rc, err = interrupt_when_logged(cmd, out, 5, getattr(signal, sig))
    assert rc == (130 if sig == "SIGINT" else 143) and "Traceback" not in err, err
    step = checkpoint.complete_steps(out)[-1]
    assert 5 <= step < 40
    assert err.strip().splitlines()[-1] == (
        f"interrupted ({sig}) after step {step}; checkpoint {checkpoint.paths(out, step)['model']}."
        f" Resume with: python -m pyllmc.train --out-dir {out} --resume")
    resumed = train(out, data, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert curve_of(out) == curve_of(straight)
