"""pyllmc.hellaswag (evals/hellaswag.py): data formats, scoring against an independent PyTorch
scorer, batching and padding, bad input, the command line and the download.

The fixture is a small set in HellaSwag's jsonl format written here, with its
twin in llm.c's tokenized eval format written by this file's own writer; the
model is a tiny GPT-2 trained for a few steps by pyllmc and saved."""
import http.server
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import pyllmc
from pyllmc import hellaswag
from pyllmc.tokenizer import gpt2_encoding, load_tokenizer
from hellaswag_files import write_eval_file
from torch_gpt2 import GPT, GPTConfig
from torch_reference import torch_on_one_thread  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parent.parent

# HellaSwag-style examples (ActivityNet- and WikiHow-like), written for these tests
RECORDS = [
    {"ctx": "A man is sitting on a roof. He", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubber ball in his hands.", "starts pulling up roofing on a roof."]},
    {"ctx": "A woman walks into the kitchen carrying a bag of groceries. She", "label": 0,
     "endings": ["puts the bag on the counter and takes out the vegetables.",
                 "jumps into the pool with her shoes on.",
                 "plays a guitar solo while the crowd cheers loudly for the band on the stage.",
                 "rides away."]},
    {"ctx": "[header] How to plant tomatoes [title] Choose a sunny spot. [step] Tomatoes need at "
            "least six hours of direct sun each day. Pick a place in the garden that is not shaded "
            "by trees or buildings.", "label": 2,
     "endings": [" [title] Paint the fence blue. [step] Blue is a calming colour.",
                 " [title] Buy a new car.",
                 (" [title] Prepare the soil. [step] Dig the bed to a depth of about a foot and "
                  "mix in compost so that the roots can grow freely."),
                 " [title] Call your grandmother and ask her about the weather in town today."]},
    {"ctx": "Two children are building a sand castle on the beach. The waves", "label": 1,
     "endings": ["sing a song about the moon.", "wash over the walls and the castle collapses.",
                 "are typing on a laptop.", "fly to the mountains."]},
    {"ctx": "A chef slices an onion on a wooden board. The chef", "label": "2",  # HF's string label
     "endings": ["drives a truck down the highway.", "paints the ceiling.",
                 "adds the onion to a hot pan with oil.", "reads the newspaper in bed at night."]},
    {"ctx": "The runner ties her shoes at the starting line. When the whistle blows, she", "label": 0,
     "endings": ["sprints down the track ahead of the others.", "falls asleep.",
                 "orders a coffee with extra milk and sugar at the counter.", "sells the house."]},
    {"ctx": "Café owners in Zürich open early — the first customers arrive at six. The barista",
     "label": 3,
     "endings": ["climbs a tree.", "writes a letter to the mayor about the parking rules.",
                 "swims across the lake.", "grinds the beans and pulls a shot of espresso."]},
    {"ctx": "A man is shown speaking to the camera in a gym. He", "label": 1,
     "endings": ["bakes a cake.", "demonstrates how to lift the barbell with a straight back.",
                 "sails a boat on the sea.", "is", ]},
    {"ctx": "[header] How to clean a laptop keyboard [title] Turn the laptop off. [step] Unplug it "
            "from the charger and remove the battery if you can. [title] Turn it upside down.",
     "label": 0,
     "endings": [" [step] Shake it gently so that crumbs fall out from under the keys.",
                 " [step] Fill it with water.",
                 " [step] Leave it in the freezer overnight.",
                 " [step] Plant it in the garden and water it twice a week until it grows."]},
]
CONFIG = pyllmc.Config(max_seq_len=128, vocab_size=50257, num_layers=2, num_heads=2, channels=32)


# ---- fixtures ----------------------------------------------------------------

def reference_tokens(records):
    enc = gpt2_encoding()
    return [(enc.encode_ordinary(r["ctx"]), [enc.encode_ordinary(" " + e) for e in r["endings"]],
             int(r["label"])) for r in records]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("hellaswag")
    jsonl = d / "hellaswag_val.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    bin_file = d / "hellaswag_val.bin"
    write_eval_file(bin_file, reference_tokens(RECORDS))
    return jsonl, bin_file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny GPT-2 trained for a few steps on the fixture's correct answers,
    so that its preferences are not uniform."""
    path = tmp_path_factory.mktemp("model") / "tiny.bin"
    text = " ".join(r["ctx"] + " " + r["endings"][int(r["label"])] for r in RECORDS)
    tokens = np.array(gpt2_encoding().encode_ordinary(text))
    rng = np.random.default_rng(0)
    B, T = 4, 32
    with pyllmc.Model.from_config(CONFIG, max_batch_size=B, max_seq_len=T, seed=1) as m:
        for _ in range(25):
            starts = rng.integers(0, len(tokens) - T - 1, size=B)
            x = np.stack([tokens[s:s + T] for s in starts])
            y = np.stack([tokens[s + 1:s + T + 1] for s in starts])
            m.step(x, y, lr=3e-3)
        m.save(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    with pyllmc.Model.load(checkpoint, max_batch_size=8) as m:
        yield m


# ---- the independent PyTorch scorer -------------------------------------------

def torch_model(path):
    """The checkpoint read straight from the file into the PyTorch GPT-2."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240326 and header[1] == 3
    max_seq_len, vocab_size, num_layers, num_heads, channels, padded_vocab_size = header[2:8]
    cfg = GPTConfig(max_seq_len=int(max_seq_len), vocab_size=int(vocab_size),
                    padded_vocab_size=int(padded_vocab_size), num_layers=int(num_layers),
                    num_heads=int(num_heads), channels=int(channels))
    gpt = GPT(cfg)
    gpt.load_flat(np.fromfile(path, dtype="<f4", offset=256 * 4))
    return gpt.eval()


@torch.no_grad()
def torch_scores(gpt, examples, window):
    """(summed loss, mean loss) of every ending, one sequence at a time as
    build-nanogpt does; sequences beyond the window keep their last tokens."""
    sums, means = np.zeros((len(examples), 4)), np.zeros((len(examples), 4))
    for i, (context, endings, _) in enumerate(examples):
        for j, ending in enumerate(endings):
            seq = torch.tensor(context + ending)[-(window + 1):]
            logits, _ = gpt(seq[None, :-1])
            losses = F.cross_entropy(logits[0], seq[1:], reduction="none")[-len(ending):]
            sums[i, j] = losses.double().sum().item()
            means[i, j] = losses.double().mean().item()
    return sums, means


def as_tuples(examples):
    return [(e.context, e.endings, e.label) for e in examples]


# ---- data --------------------------------------------------------------------

def test_jsonl_and_llmc_bin_give_the_same_examples(data):
    jsonl, bin_file = data
    expected = reference_tokens(RECORDS)
    assert as_tuples(hellaswag.load_examples(jsonl)) == expected
    assert as_tuples(hellaswag.load_examples(bin_file)) == expected


def test_bin_detected_by_magic_whatever_its_name(data, tmp_path):
    renamed = tmp_path / "eval.data"
    renamed.write_bytes(data[1].read_bytes())
    assert as_tuples(hellaswag.load_examples(renamed)) == reference_tokens(RECORDS)


def test_download_once_into_cache(data, tmp_path):
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = data[0].read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/data/hellaswag_val.jsonl"
        first = hellaswag.load_examples(cache_dir=tmp_path / "cache", url=url)
        again = hellaswag.load_examples(cache_dir=tmp_path / "cache", url=url)
    finally:
        server.shutdown()
        server.server_close()
    assert requests == ["/data/hellaswag_val.jsonl"]
    assert as_tuples(first) == as_tuples(again) == reference_tokens(RECORDS)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["hellaswag_val.jsonl"]


def test_offline_without_a_file_says_how_to_give_one(tmp_path):
    with pytest.raises(hellaswag.DownloadError, match="--data"):
        hellaswag.load_examples(cache_dir=tmp_path, url="http://127.0.0.1:9/hellaswag_val.jsonl")
    assert list(tmp_path.iterdir()) == [], "no partial file left behind"


@pytest.mark.parametrize("line, message", [
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0', r"x\.jsonl:2: not valid JSON"),
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 4}',
     r"x\.jsonl:2: 'label' is 4; expected an integer in 0\.\.3"),
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": -1}', r"'label' is -1"),
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": "x"}', r"'label' is 'x'"),
    ('{"ctx": "A man", "endings": ["a", "b", "c"], "label": 0}',
     r"'endings' .* expected a list of 4 strings"),
    ('{"ctx": "", "endings": ["a", "b", "c", "d"], "label": 0}', r"'ctx' is ''"),
    ('{"endings": ["a", "b", "c", "d"], "label": 0}', r"missing field 'ctx'"),
    ('[1, 2]', r"expected a JSON object, found list"),
])
def test_bad_jsonl_line(tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + line + "\n")
    with pytest.raises(hellaswag.DataError, match=message):
        hellaswag.load_examples(path)


def test_bad_eval_file(data, tmp_path):
    good = data[1].read_bytes()
    header = np.frombuffer(good[:1024], "<i4").copy()
    words = np.frombuffer(good[1024:], "<u2").copy()

    def check(header, words, message, name="bad.bin"):
        path = tmp_path / name
        path.write_bytes(header.tobytes() + words.tobytes())
        with pytest.raises(hellaswag.DataError, match=message):
            hellaswag.load_examples(path)

    bad = header.copy(); bad[0] = 20240520
    check(bad, words, r"bad\.bin: magic number 20240520; expected 20240522")
    bad = header.copy(); bad[1] = 2
    check(bad, words, "version 2; expected 1")
    bad = header.copy(); bad[2] += 1
    check(bad, words, r"example 9 .*file ends early; the header promises 10")
    bad = header.copy(); bad[2] -= 1
    check(bad, words, "after the last of the 8 examples")
    check(header, words[:-3], r"example 8 .*does not fit the file")
    bad = words.copy(); bad[3] = 7
    check(header, bad, r"example 0 .*label 7; expected 0\.\.3")
    bad = words.copy(); bad[0] = 1
    check(header, bad, "expected the delimiter 65535")
    bad = words.copy(); bad[4] = 3
    check(header, bad, "3 endings; expected 4")
    bad = words.copy(); bad[5] += 100
    check(header, bad, "context length .* does not fit")
    (tmp_path / "short.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(hellaswag.DataError, match="too short"):
        hellaswag.load_examples(tmp_path / "short.bin")


# ---- scoring -------------------------------------------------------------------

def test_scores_match_pytorch(data, checkpoint, model):
    examples = hellaswag.load_examples(data[0])
    sums, counts = hellaswag.score(model, examples)
    ref_sums, ref_means = torch_scores(torch_model(checkpoint), reference_tokens(RECORDS),
                                       model.max_seq_len)
    assert np.array_equal(counts, [[len(t) for t in e.endings] for e in examples])
    # mean loss within 1e-5; the summed loss adds up the float32 rounding of
    # each token's loss, so it gets 1e-5 per token
    assert np.abs(sums / counts - ref_means).max() < 1e-5
    assert np.all(np.abs(sums - ref_sums) < 1e-5 * counts)
    assert np.array_equal(sums.argmin(1), ref_sums.argmin(1))
    assert np.array_equal((sums / counts).argmin(1), ref_means.argmin(1))
    labels = np.array([e.label for e in examples])
    result = hellaswag.evaluate(model, examples)
    assert result == {"acc": np.mean(ref_sums.argmin(1) == labels),
                      "acc_norm": np.mean(ref_means.argmin(1) == labels),
                      "num_examples": len(RECORDS)}


def test_batching_and_padding_do_not_change_scores(data, model, monkeypatch):
    """Scores agree whatever the batch size and padding, up to float32 rounding
    (the BLAS blocks its matmuls by their size, so a row's last bits may move
    with the batch's shape), and so do the predictions."""
    examples = hellaswag.load_examples(data[0])
    reference, counts = hellaswag.score(model, examples, batch_size=1)
    for max_shapes in (None, 3, 1):  # 1: every pass padded to the longest sequence, full rows
        monkeypatch.setitem(hellaswag.MAX_SHAPES, "cpu", max_shapes)
        for batch_size in (2, 3, 8):
            sums, _ = hellaswag.score(model, examples, batch_size)
            assert np.abs(sums - reference).max() < 1e-5
            assert np.array_equal(sums.argmin(1), reference.argmin(1))
            assert np.array_equal((sums / counts).argmin(1), (reference / counts).argmin(1))


def test_fitting_lengths_pads_the_fewest_tokens():
    """Against every way of splitting the passes into contiguous groups."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, max_shapes, rows = int(rng.integers(1, 9)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
        longest = np.sort(rng.integers(1, 50, size=n))[::-1]
        lengths = hellaswag.fitting_lengths(longest, rows, max_shapes)
        assert np.all(lengths >= longest) and np.all(np.diff(lengths) <= 0)
        assert len(set(lengths.tolist())) <= max_shapes
        fewest = min(
            sum(longest[i] * (j - i) for i, j in zip((0, *cuts), (*cuts, n))) * rows
            for k in range(min(max_shapes, n))
            for cuts in itertools.combinations(range(1, n), k))
        assert lengths.sum() * rows == fewest


def test_padding_tokens_are_invisible(data, model):
    """Within one batch shape, whatever fills the padding, every loss is
    bit-identical: a sequence starts at position 0 of its row and attention is
    causal, so nothing after it reaches it, and padding's targets are -1."""
    rows = hellaswag.Rows(hellaswag.load_examples(data[0]), model.max_seq_len)
    batch = np.arange(8)
    inputs, targets = rows.batch(batch, 96)
    padding = np.arange(96) >= rows.length[batch, None]
    assert padding.any() and np.all(targets[padding] == -1)
    _, losses = model.eval(inputs, targets, per_token=True)
    noise = np.random.default_rng(0).integers(0, 50257, size=inputs.shape)
    _, noisy = model.eval(np.where(padding, noise, inputs), targets, per_token=True)
    assert np.array_equal(losses, noisy)
    assert np.all(losses[targets == -1] == 0) and np.all(losses[targets != -1] > 0)


def test_long_sequences_lose_context_from_the_left(data, checkpoint):
    examples = hellaswag.load_examples(data[0])
    window = 40
    with (pyllmc.Model.load(checkpoint, max_batch_size=8, max_seq_len=window) as m,
          pytest.warns(UserWarning, match="cut from the left")):
        sums, counts = hellaswag.score(m, examples)
    ref_sums, ref_means = torch_scores(torch_model(checkpoint), reference_tokens(RECORDS), window)
    assert np.abs(sums / counts - ref_means).max() < 1e-5
    assert np.all(np.abs(sums - ref_sums) < 1e-5 * counts)


def test_ending_longer_than_the_window(data, checkpoint):
    examples = hellaswag.load_examples(data[0])
    with (pyllmc.Model.load(checkpoint, max_batch_size=4, max_seq_len=8) as m,
          pytest.raises(hellaswag.DataError, match="more than the model's window of 8")):
        hellaswag.score(m, examples)


def test_tokens_beyond_the_vocabulary(data):
    small = pyllmc.Config(max_seq_len=64, vocab_size=1000, num_layers=1, num_heads=1, channels=8)
    with (pyllmc.Model.from_config(small, max_batch_size=4) as m,
          pytest.raises(hellaswag.DataError, match="vocabulary of 1000")):
        hellaswag.evaluate(m, hellaswag.load_examples(data[0]))


def test_batch_size_beyond_the_plan(data, model):
    with pytest.raises(ValueError, match="batch_size 9: expected 1..8"):
        hellaswag.evaluate(model, hellaswag.load_examples(data[0]), batch_size=9)


# ---- command line ----------------------------------------------------------------

def test_cli(data, checkpoint, model, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert hellaswag.main([str(checkpoint), "--data", str(data[1]), "--device", "cpu",
                           "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    expected = hellaswag.evaluate(model, hellaswag.load_examples(data[0]))
    assert {k: result[k] for k in expected} == expected
    printed = capsys.readouterr().out
    assert f"acc_norm  {expected['acc_norm']:.4f}" in printed
    assert hellaswag.main([str(checkpoint), "--data", str(data[0]), "--limit", "3",
                           "--json", str(out), "--quiet", "--batch-size", "5"]) == 0
    assert json.loads(out.read_text())["num_examples"] == 3


def test_cli_checkpoint_that_is_not_a_model(data, capsys):
    assert hellaswag.main([str(data[0]), "--data", str(data[0]), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(data[0]) in err


def test_cli_as_a_script_reports_bad_data(data, checkpoint, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 9}\n')
    run = subprocess.run([sys.executable, str(REPO / "evals" / "hellaswag.py"), str(checkpoint),
                          "--data", str(bad)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1
    assert "bad.jsonl:1: 'label' is 9" in run.stderr and "Traceback" not in run.stderr


# ---- a Llama ----------------------------------------------------------------------

def test_a_llama_scores_as_transformers_llama_for_causal_lm(data, tmp_path):
    """A tiny random Llama (GQA, untied) on GPT-2's vocabulary, written as a
    model file and scored by the command line's path, against transformers'
    LlamaForCausalLM with the same weights, one sequence at a time."""
    transformers = pytest.importorskip("transformers")
    from pyllmc import hf
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50257, hidden_size=32, intermediate_size=44, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, rope_theta=10000.0, attn_implementation="eager")).float().eval()
    with torch.no_grad():
        for p in ref.parameters():  # larger than the init: preferences that are not uniform
            p.normal_(0.0, 0.3 if p.dim() == 1 else 0.08).add_(1.0 if p.dim() == 1 else 0.0)
    config = hf.read_llama_config(ref.config.to_dict(), "test")
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    with pyllmc.Model.from_config(config, max_batch_size=1, max_seq_len=8) as m:
        m.set_parameters(hf.llama_hf_to_llmc(state, m.config))
        m.save(tmp_path / "llama.bin")
    examples = hellaswag.load_examples(data[1])
    with hellaswag.open_model(tmp_path / "llama.bin", examples, batch_size=7) as model:
        assert model.config.is_llama
        sums, counts = hellaswag.score(model, examples)
        result = hellaswag.evaluate(model, examples)
    gpt = lambda x: (ref(x).logits, None)  # noqa: E731 (torch_scores' model call)
    ref_sums, ref_means = torch_scores(gpt, reference_tokens(RECORDS), config.max_seq_len)
    assert np.abs(sums / counts - ref_means).max() < 1e-5
    assert np.all(np.abs(sums - ref_sums) < 1e-5 * counts)
    assert len(set((sums / counts).argmin(1))) > 1  # the model tells endings apart
    labels = np.array([e.label for e in examples])
    assert result == {"acc": np.mean(ref_sums.argmin(1) == labels),
                      "acc_norm": np.mean(ref_means.argmin(1) == labels),
                      "num_examples": len(RECORDS)}


def test_another_vocabulary_through_tokenizer(data, llama3_tokenizer_files, tmp_path, capsys):
    """--tokenizer: the text in a Llama-3-shaped rank file's tokens (as
    transformers' conversion of it gives them), scored by a model of that
    vocabulary; llm.c's .bin (GPT-2 tokens) and bad files are refused."""
    import tokenizers
    rank_path, json_path = llama3_tokenizer_files
    hf = tokenizers.Tokenizer.from_file(str(json_path))
    encode = lambda text: hf.encode(text, add_special_tokens=False).ids  # noqa: E731
    tok = load_tokenizer(rank_path)
    examples = hellaswag.load_examples(data[0], tokenizer=tok)
    assert as_tuples(examples) == [(encode(r["ctx"]), [encode(" " + e) for e in r["endings"]],
                                    int(r["label"])) for r in RECORDS]
    with pytest.raises(hellaswag.DataError, match="holds GPT-2 tokens"):
        hellaswag.load_examples(data[1], tokenizer=tok)
    config = pyllmc.Config(family=1, max_seq_len=128, vocab_size=128_256, num_layers=1,
                           num_heads=2, channels=16, num_kv_heads=1)
    with pyllmc.Model.from_config(config, max_batch_size=1, max_seq_len=8) as m:
        m.save(tmp_path / "llama.bin")
    args = [str(tmp_path / "llama.bin"), "--data", str(data[0]), "--limit", "2", "--batch-size",
            "2", "--quiet"]
    assert hellaswag.main(args + ["--tokenizer", str(rank_path)]) == 0
    assert "examples  2" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="128,256 tokens, the tokenizer's \\(gpt2\\) 50,257"):
        assert hellaswag.main(args) == 0
    assert hellaswag.main(args + ["--tokenizer", str(tmp_path / "llama.bin")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'llama.bin'}: line 1")
