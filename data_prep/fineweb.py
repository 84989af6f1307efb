"""
FineWeb / FineWeb-Edu (or local parquet, jsonl and text files) to GPT-2 token
shards in llm.c's format:

    python data_prep/fineweb.py                      # FineWeb-Edu sample-10BT
    python data_prep/fineweb.py --input my_corpus/   # local files

The command users type; the code is pyllmc.fineweb (also
`python -m pyllmc.fineweb`), installed by `make`.
"""
import sys

try:
    from pyllmc.fineweb import main
except ModuleNotFoundError as e:
    if e.name != "pyllmc":
        raise
    sys.exit("error: pyllmc is not installed in this Python: run `make` in the llmc repository")

if __name__ == "__main__":
    main()
