"""
Text from a model: `python -m pyllmc.sample out/model_00000300.bin --prompt "The"`.

Sampling runs in libllmc through a key/value cache (pyllmc.generate): all
samples together as one batch, tokens printed as they come (one sample
streams; several are printed whole, each under its header, once done).
"""
import argparse
import codecs
import sys

from .files import os_error_message
from .tokenizer import EOT, decode_bytes, encode


def sample_text(model, prompt="", max_new_tokens=64, temperature=1.0, top_k=None, seed=0):
    """The prompt and its sampled continuation as text (an empty prompt starts
    from <|endoftext|>, i.e. the start of a document)."""
    prompt_tokens = encode(prompt) if prompt else [EOT]
    new = model.generate([prompt_tokens], max_new_tokens, temperature, top_k or 0, seed=seed,
                         stop_token=None)[0]
    return decode_bytes(prompt_tokens[0 if prompt else 1:] + new).decode("utf-8", "replace")


def text_writer(out):
    """write(tokens, final=False): their text to out as it comes; a character
    split across tokens waits for its last byte (codecs' incremental decoder)."""
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def write(tokens, final=False):
        out.write(utf8.decode(decode_bytes(tokens), final))
        out.flush()
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
    p.add_argument("--stop-at-eot", action="store_true", help="end a sample at <|endoftext|>")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1 or args.num_samples < 1:
        p.error("--max-new-tokens and --num-samples must be >= 1")

    import pyllmc
    try:
        prompts = read_prompts(args)
        tokens = [encode(t) if t else [EOT] for t in prompts]
        with pyllmc.Model.load(args.checkpoint, device=args.device, max_batch_size=1) as model:
            stream = None
            if len(prompts) == 1:
                write = text_writer(sys.stdout)
                write(tokens[0][0 if prompts[0] else 1:])
                stream = lambda i, token, logprob: write([token])  # noqa: E731
            new = model.generate(tokens, args.max_new_tokens, args.temperature, args.top_k,
                                 args.top_p, args.seed, "eot" if args.stop_at_eot else None,
                                 stream=stream)
            if stream:
                write([], final=True)
                print()
            else:
                for i, (prompt, sampled) in enumerate(zip(tokens, new)):
                    text = decode_bytes(prompt[0 if prompts[i] else 1:] + sampled).decode(
                        "utf-8", "replace")
                    print(f"--- sample {i + 1} ---\n{text}")
    except OSError as e:
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(1)
    except (pyllmc.LlmcError, pyllmc.LibraryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
