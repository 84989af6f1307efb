"""
HellaSwag accuracy of a model file (GPT-2 or Llama):

    python evals/hellaswag.py model.bin                    # fetches the val set once
    python evals/hellaswag.py model.bin --data hellaswag_val.jsonl --limit 500
    python evals/hellaswag.py llama1b.bin --tokenizer Llama-3.2-1B/tokenizer.json

The command users type; the code is pyllmc.hellaswag (also
`python -m pyllmc.hellaswag`), installed by `make`.
"""
import sys

try:
    from pyllmc.hellaswag import main
except ModuleNotFoundError as e:
    if e.name != "pyllmc":
        raise
    sys.exit("error: pyllmc is not installed in this Python: run `make` in the llmc repository")

if __name__ == "__main__":
    sys.exit(main())
