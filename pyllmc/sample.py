"""
Text from a model: `python -m pyllmc.sample out/model_00000300.bin --prompt "The"`.

Sampling runs in libllmc through a key/value cache (pyllmc.generate): all
samples together as one batch, tokens printed as they come (one sample
streams; several are printed whole, each under its header, once done).
"""
import argparse
import sys

from .tokenizer import load_tokenizer
from .cli import one_line_errors


def tokens_text(tokenizer, tokens):
    """The text of tokens; ids beyond the tokenizer's vocabulary (a model's may
    be larger) give none, bytes that are not valid UTF-8 become U+FFFD."""
    return tokenizer.decode([t for t in tokens if t < tokenizer.vocab_size])


def sample_text(model, prompt="", max_new_tokens=64, temperature=1.0, top_k=None, seed=0,
                tokenizer=None):
    """The prompt and its sampled continuation as text (an empty prompt starts
    from the tokenizer's document token, <|endoftext|> for GPT-2, i.e. the
    start of a document). tokenizer: a tokenizer.Tokenizer, GPT-2's when None."""
    tok = tokenizer or load_tokenizer()
    prompt_tokens = tok.encode(prompt) if prompt else [tok.eot]
    new = model.generate([prompt_tokens], max_new_tokens, temperature, top_k or 0, seed=seed,
                         stop_token=None)[0]
    return tokens_text(tok, prompt_tokens[0 if prompt else 1:] + new)


def text_writer(out, tokenizer):
    """write(tokens, final=False): their text to out as it comes; the tokens
    of a character split across tokens wait (their text ends in U+FFFD) until
    its last byte has come, then go out together."""
    pending = []

    def write(tokens, final=False):
        pending.extend(tokens)
        text = tokens_text(tokenizer, pending)
        if final or not text.endswith("\ufffd"):
            out.write(text)
            out.flush()
            pending.clear()
    return write


def read_prompts(args):
    if args.prompt_file is None:
        return [args.prompt] * args.num_samples
    with open(args.prompt_file, encoding="utf-8") as f:
        lines = [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{args.prompt_file}: no prompts (one per line)")
    return [p for p in lines for _ in range(args.num_samples)]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m pyllmc.sample",
                                description="Sample text from a model file (llm.c format).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="model file, e.g. out/model_00000300.bin")
    p.add_argument("--prompt", default="", help="text to continue (empty: a new document)")
    p.add_argument("--prompt-file", default=None,
                   help="one prompt per line (\\n in a line is a newline); --num-samples each")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0: always the likeliest token")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample among the likeliest tokens holding this probability (1: all)")
    p.add_argument("--num-samples", type=int, default=1, help="samples of each prompt")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first sample "
                   "(sample i uses seed + i)")
    p.add_argument("--stop-at-eot", action="store_true", help="end a sample at the token that starts "
                   "documents (GPT-2's <|endoftext|>, Llama 3's <|begin_of_text|>)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tokenizer", metavar="FILE",
                   help="the model's local tokenizer.json or tiktoken rank file (Llama 3's "
                        "original/tokenizer.model) (default: GPT-2's)")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1 or args.num_samples < 1:
        p.error("--max-new-tokens and --num-samples must be >= 1")

    import pyllmc
    with one_line_errors(pyllmc.LlmcError, pyllmc.LibraryError, ValueError):
        tokenizer = load_tokenizer(args.tokenizer)
        prompts = read_prompts(args)
        tokens = [tokenizer.encode(t) if t else [tokenizer.eot] for t in prompts]
        # the model's training plan covers the context generation can reach,
        # not all of an imported Llama's 131,072 positions
        needed = max(len(t) for t in tokens) + args.max_new_tokens
        T = min(pyllmc.Config.from_file(args.checkpoint).max_seq_len, needed)
        with pyllmc.Model.load(args.checkpoint, device=args.device, max_batch_size=1,
                               max_seq_len=T) as model:
            stream = None
            if len(prompts) == 1:
                write = text_writer(sys.stdout, tokenizer)
                write(tokens[0][0 if prompts[0] else 1:])
                stream = lambda i, token, logprob: write([token])  # noqa: E731
            stop = tokenizer.eot if args.stop_at_eot else None
            new = model.generate(tokens, args.max_new_tokens, args.temperature, args.top_k,
                                 args.top_p, args.seed, stop, stream=stream)
            if stream:
                write([], final=True)
                print()
            else:
                for i, (prompt, sampled) in enumerate(zip(tokens, new)):
                    text = tokens_text(tokenizer, prompt[0 if prompts[i] else 1:] + sampled)
                    print(f"--- sample {i + 1} ---\n{text}")


if __name__ == "__main__":
    main()
