"""The CPU backend against PyTorch (tests/torch_gpt2.py), fp32, from the same
weights and batches: logits, losses, every parameter gradient and AdamW
training, on a small config and on odd sizes; plus determinism."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pyllmc import Config, Model, OutOfMemoryError
from torch_gpt2 import GPT, GPTConfig
from torch_reference import rel_err, torch_on_one_thread  # noqa: F401 (autouse fixture)

# (config, B, T): T below the model's max_seq_len and B below the planned
# max_batch_size, so that the backend's use of its planned buffers is tested
SMALL = (Config(max_seq_len=64, vocab_size=512, num_layers=2, num_heads=4, channels=64), 4, 64)
ODD = (Config(max_seq_len=40, vocab_size=777, num_layers=2, num_heads=5, channels=80), 3, 29)
# T over two attention tiles of 64 rows, the last one partial
LONG = (Config(max_seq_len=160, vocab_size=300, num_layers=2, num_heads=3, channels=48), 2, 150)
CASES = {"small": SMALL, "odd": ODD, "long": LONG}
# GPT-2's vocabulary, where the LM head's products are large enough to be
# shared among threads in several parts
FULL_VOCAB = (Config(max_seq_len=64, vocab_size=50257, num_layers=1, num_heads=2, channels=64), 2, 64)


def make_pair(config, B, seed=0, num_threads=0, perturbed=False):
    """A model in libllmc (GPT-2 init from seed) and the same weights in
    PyTorch. perturbed adds N(0, 0.1) noise to every parameter: attention
    then picks out a few positions and GELU leaves its near-linear part,
    where GPT-2's init would keep everything mild."""
    model = Model.from_config(config, max_batch_size=B + 1, seed=seed, num_threads=num_threads)
    if perturbed:
        params = model.parameters()
        noise = np.random.default_rng(seed).standard_normal(params.shape)
        model.set_parameters(params + 0.1 * noise.astype(np.float32))
    c = model.config
    ref = GPT(GPTConfig(c.max_seq_len, c.vocab_size, c.padded_vocab_size, c.num_layers,
                        c.num_heads, c.channels))
    ref.load_flat(torch.from_numpy(model.parameters()))
    return model, ref


def make_batch(rng, V, B, T, micro_steps=None, ignored=5):
    """Random inputs, each target a fixed function of its input (so that
    training has something to learn); the first few targets of the first
    row are -1 (ignored)."""
    shape = (B, T) if micro_steps is None else (micro_steps, B, T)
    x = rng.integers(0, V, shape)
    y = (7 * x + 3) % V
    y.reshape(-1, T)[0, :ignored] = -1
    return x, y


@pytest.mark.parametrize("weights", ["init", "perturbed"])
@pytest.mark.parametrize("case", CASES)
def test_logits_and_losses_match_torch(case, weights):
    config, B, T = CASES[case]
    model, ref = make_pair(config, B, perturbed=weights == "perturbed")
    x, y = make_batch(np.random.default_rng(1), config.vocab_size, B, T)
    with torch.no_grad():
        ref_logits, ref_loss = ref(torch.from_numpy(x), torch.from_numpy(y))
        ref_per_token = F.cross_entropy(ref_logits.flatten(0, 1), torch.from_numpy(y).flatten(),
                                        ignore_index=-1, reduction="none").view(B, T)
    logits = model.logits(x)
    assert logits.shape == (B, T, config.vocab_size)
    assert rel_err(logits, ref_logits.numpy()) < 1e-5
    assert rel_err(model.logits(x, last_only=True), logits[:, -1]) < 1e-6

    loss, per_token = model.eval(x, y, per_token=True)
    assert abs(loss - ref_loss.item()) < 1e-5
    assert np.abs(per_token - ref_per_token.numpy()).max() < 1e-5
    assert np.all(per_token[y == -1] == 0)


@pytest.mark.parametrize("weights", ["init", "perturbed"])
@pytest.mark.parametrize("case", CASES)
def test_every_gradient_matches_torch(case, weights):
    config, B, T = CASES[case]
    model, ref = make_pair(config, B, perturbed=weights == "perturbed")
    x, y = make_batch(np.random.default_rng(2), config.vocab_size, B, T)
    loss = model.backward(x, y)
    _, ref_loss = ref(torch.from_numpy(x), torch.from_numpy(y))
    ref_loss.backward()
    assert abs(loss - ref_loss.item()) < 1e-5
    grads, ref_grads = model.gradients(), ref.flat_grads().numpy()
    for name, start, end in ref.tensor_slices():
        assert rel_err(grads[start:end], ref_grads[start:end]) < 1e-4, name
    # the padded vocabulary rows never see a gradient
    V, C = config.vocab_size, config.channels
    assert np.all(grads[V * C: model.config.padded_vocab_size * C] == 0)


@pytest.mark.parametrize("vocab_size", [50257, 777])
def test_eval_of_a_few_counted_targets_matches_the_full_computation(vocab_size):
    """Evaluation runs the LM head on the counted rows only (a HellaSwag batch
    is mostly context, targets -1): their losses are those of the whole
    batch's, within rounding (the BLAS may round a row differently in a
    product of another size), and PyTorch's; ignored rows get 0; the result
    is the same for any thread count. N = 1200 rows: the whole batch takes
    three chunks of the LM head, the counted rows one."""
    config = Config(max_seq_len=300, vocab_size=vocab_size, num_layers=1, num_heads=2, channels=64)
    B, T = 4, 300
    model, ref = make_pair(config, B, perturbed=True)
    rng = np.random.default_rng(9)
    x, y = make_batch(rng, vocab_size, B, T, ignored=0)
    y_few = np.where(rng.random((B, T)) < 0.7, -1, y)
    y_few[2] = -1  # a row with nothing counted
    counted = y_few != -1

    _, full = model.eval(x, y, per_token=True)
    loss, few = model.eval(x, y_few, per_token=True)
    assert np.all(few[~counted] == 0)
    assert np.abs(few[counted] - full[counted]).max() <= 1e-6 * np.abs(full[counted]).max()
    assert loss == pytest.approx(full[counted].mean(), rel=1e-6)
    with torch.no_grad():
        ref_logits, _ = ref(torch.from_numpy(x))
        ref_few = F.cross_entropy(ref_logits.flatten(0, 1), torch.from_numpy(y_few).flatten(),
                                  ignore_index=-1, reduction="none").view(B, T).numpy()
    assert np.abs(few - ref_few).max() < 1e-5
    one_thread = Model.from_config(config, max_batch_size=B + 1, num_threads=1)
    one_thread.set_parameters(model.parameters())
    assert np.array_equal(one_thread.eval(x, y_few, per_token=True)[1], few)


def test_padded_vocabulary_never_changes_the_loss():
    config, B, T = ODD
    model, _ = make_pair(config, B)
    x, y = make_batch(np.random.default_rng(3), config.vocab_size, B, T)
    loss, logits = model.eval(x, y), model.logits(x)
    params = model.parameters()
    V, Vp, C = config.vocab_size, model.config.padded_vocab_size, config.channels
    params[V * C: Vp * C] = 1e3 * np.random.default_rng(4).standard_normal((Vp - V) * C)
    model.set_parameters(params)
    assert model.eval(x, y) == loss
    assert np.array_equal(model.logits(x), logits)


def torch_train(ref, batches, hp, grad_clip):
    """What pyllmc's step does, in PyTorch: the mean loss over every counted
    target of the step's micro-batches, clipping, AdamW."""
    opt = ref.configure_optimizer(hp["lr"], hp["weight_decay"], (hp["beta1"], hp["beta2"]), hp["eps"])
    losses, norms = [], []
    for x, y in batches:
        counted = int((y != -1).sum())
        total = 0.0
        for xm, ym in zip(torch.from_numpy(x), torch.from_numpy(y)):
            logits, _ = ref(xm)
            loss = F.cross_entropy(logits.flatten(0, 1), ym.flatten(), ignore_index=-1,
                                   reduction="sum") / counted
            loss.backward()
            total += loss.item()
        norms.append(torch.nn.utils.clip_grad_norm_(ref.parameters(), grad_clip).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses, norms


@pytest.mark.parametrize("case", ["small", "odd"])  # "long" differs in attention only, checked above
def test_adamw_training_matches_torch(case):
    """10 steps with weight decay, gradient clipping (which bites in some steps
    and not in others) and 2 micro-steps of gradient accumulation: the same
    losses, norms and final parameters."""
    config, B, T = CASES[case]
    model, ref = make_pair(config, B)
    rng = np.random.default_rng(5)
    batches = [make_batch(rng, config.vocab_size, B, T, micro_steps=2) for _ in range(10)]
    hp = dict(lr=2e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    grad_clip = 1.0
    results = [model.step(x, y, grad_clip=grad_clip, **hp) for x, y in batches]
    ref_losses, ref_norms = torch_train(ref, batches, hp, grad_clip)

    losses, norms = zip(*results)
    assert np.abs(np.array(losses) - ref_losses).max() < 1e-4
    assert np.allclose(norms, ref_norms, rtol=1e-4)
    assert min(norms) < grad_clip < max(norms)
    assert losses[-1] < losses[0] - 0.5  # the model learned
    # Final parameters, tensor by tensor. One part is left out: the attention
    # key bias adds the same q.b to every score of a row, which softmax
    # cancels, so its gradient is zero but for rounding noise, and Adam turns
    # that noise into steps of +-lr in both implementations alike.
    params, ref_params = model.parameters(), ref.to_flat().numpy()
    C, L = config.channels, config.num_layers
    for name, start, end in ref.tensor_slices():
        p, r = params[start:end], ref_params[start:end]
        if name == "qkvb":
            keep = np.ones((L, 3, C), bool)
            keep[:, 1] = False
            p, r = p[keep.ravel()], r[keep.ravel()]
        assert np.linalg.norm(p - r) / np.linalg.norm(r) < 1e-4, name
    assert model.step_count == 10


def train(config, B, T, num_threads, steps=3):
    model = Model.from_config(config, max_batch_size=B, seed=11, num_threads=num_threads)
    rng = np.random.default_rng(6)
    losses = [model.step(*make_batch(rng, config.vocab_size, B, T), lr=1e-3, weight_decay=0.1)
              for _ in range(steps)]
    return losses, model.parameters()


@pytest.mark.parametrize("case", ["small", "odd", "long", "full_vocab"])
def test_training_is_bit_identical_for_any_thread_count(case):
    config, B, T = {**CASES, "full_vocab": FULL_VOCAB}[case]
    losses, params = train(config, B, T, num_threads=2)
    for num_threads in (2, 1, 3):
        again_losses, again_params = train(config, B, T, num_threads=num_threads)
        assert again_losses == losses, num_threads
        assert np.array_equal(again_params, params), num_threads


def test_logits_of_the_whole_batch_are_never_held():
    """The LM head runs a chunk of rows at a time: a training step's memory
    stays below what B x T x V logits alone would take."""
    config = Config(max_seq_len=256, vocab_size=50257, num_layers=1, num_heads=2, channels=64)
    B, T = 8, 256
    model = Model.from_config(config, max_batch_size=B)
    model.step(*make_batch(np.random.default_rng(7), config.vocab_size, B, T), lr=1e-3)
    assert model.memory_bytes < B * T * config.vocab_size * 4


def test_training_memory_that_does_not_fit_is_an_error_and_eval_still_works():
    """Evaluation needs one block's activations (2 GiB here, mostly attention
    probabilities, allocated but barely touched); training would keep all 100
    blocks' (200 GiB), which no test machine has."""
    config = Config(max_seq_len=1024, vocab_size=100, num_layers=100, num_heads=1, channels=16)
    model = Model.from_config(config, max_batch_size=500)
    x, y = make_batch(np.random.default_rng(8), config.vocab_size, 2, 8)
    loss = model.eval(x, y)
    with pytest.raises(OutOfMemoryError, match="out of host memory"):
        model.step(x, y, lr=1e-3)
    assert model.eval(x, y) == loss


def test_checkpoint_exported_from_pytorch_loads_with_pytorch_logits(tmp_path):
    """A PyTorch model written tensor by tensor in llm.c's layout, as an export
    script does (header, then each of the 16 tensors whole across layers)."""
    config, B, T = ODD
    ref = GPT(GPTConfig(config.max_seq_len, config.vocab_size, 896, config.num_layers,
                        config.num_heads, config.channels))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.05)
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, 3, config.max_seq_len, config.vocab_size, config.num_layers,
                  config.num_heads, config.channels, 896]
    path = tmp_path / "from_torch.bin"
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for group in ref.llmc_tensors():
            f.write(torch.cat([p.detach().reshape(-1) for p in group]).numpy().tobytes())
    x = np.random.default_rng(4).integers(0, config.vocab_size, (B, T))
    with Model.load(path, max_batch_size=B) as model, torch.no_grad():
        assert model.config.padded_vocab_size == 896
        ref_logits, _ = ref(torch.from_numpy(x))
        assert rel_err(model.logits(x), ref_logits.numpy()) < 1e-5
