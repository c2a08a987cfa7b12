"""Writes the demo CLIP's byte-level BPE tokenizer (vocab.json, merges.txt) in CLIP's format.

The vocabulary holds the 256 byte symbols, their end-of-word ("</w>") forms, one merge result
per learnt merge and the two special tokens, in the order OpenAI CLIP uses, so
``transformers.CLIPTokenizer`` loads it unchanged. Merges are learnt by plain BPE on the words
of the demo captions until every caption word is a single token; any other text still
tokenises, into smaller pieces down to single bytes, so no prompt can fail to tokenise.

Usage:
  python tools/make_demo_tokenizer.py OUT_DIR
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib

from transformers.models.clip.tokenization_clip import bytes_to_unicode

from clipclop_jax.guidance.demo_data.captions import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE: merges the most frequent adjacent pair until every word is one symbol."""
    byte_symbol = bytes_to_unicode()
    splits = []
    for word in words:
        symbols = [byte_symbol[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        splits.append(symbols)
    merges = []
    while True:
        counts = collections.Counter()
        for symbols in splits:
            counts.update(zip(symbols, symbols[1:], strict=False))
        if not counts:
            return merges
        # Ties broken by the pair itself, so the output does not depend on hash order.
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        for k, symbols in enumerate(splits):
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[k] = merged


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id in CLIP's order; the end-of-text token has the largest id."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def write_tokenizer(out_dir: pathlib.Path) -> dict[str, int]:
    """Writes vocab.json and merges.txt to ``out_dir``; returns the vocabulary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(vocabulary())
    vocab = build_vocab(merges)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2 (clipclop-jax demo tokenizer)"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path)
    vocab = write_tokenizer(parser.parse_args().out_dir)
    print(f"wrote {len(vocab)} tokens")


if __name__ == "__main__":
    main()
