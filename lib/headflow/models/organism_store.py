"""How the committed organisms are stored: half precision, one shared vision tower.

Four organisms share one vision tower (trained for ``organism-scratch``; the others take it
frozen).  To keep the repository light, ``data/models/vision-tower/model.safetensors`` holds the
tower once, and each organism's ``model.safetensors`` holds the rest (projector and language model)
in float16; ``shared_weights.json`` in the organism's folder names the tower file and its sha256
(so the folder's fingerprint changes with the tower).  :func:`load` builds the stock
``LlavaForConditionalGeneration`` from the folder's config and loads both files strictly, upcast to
the config's float32: the organism *is* the rounded checkpoint (training evaluates it after the
same rounding, :func:`round_trip`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, GenerationConfig, LlavaForConditionalGeneration

from headflow.util.hashing import sha256

STORED_DTYPE = torch.float16
TOWER_PREFIX = "model.vision_tower."
SHARED_FILE = "shared_weights.json"


def is_stored(folder: Path | str) -> bool:
    """True for a folder written by :func:`save` (a shared tower file is named)."""
    return (Path(folder) / SHARED_FILE).exists()


def round_trip(model) -> None:
    """Round every floating parameter to the stored precision and back, in place (what :func:`load` gives)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(STORED_DTYPE).to(p.dtype))


def save(model, processor, folder: Path | str, tower_dir: Path | str, replace_tower: bool = False) -> None:
    """Write ``model`` to ``folder`` (config, processor, non-tower weights in float16) and its vision
    tower to ``tower_dir/model.safetensors``, unless that file already holds exactly this tower
    (a different tower there is an error, the organisms share one, unless ``replace_tower``: a
    retrained tower, after which the organisms saved with the old one refuse to load)."""
    folder, tower_dir = Path(folder), Path(tower_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tower_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", STORED_DTYPE).contiguous() for k, v in model.state_dict().items()}
    tower = {k[len(TOWER_PREFIX):]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
    rest = {k: v for k, v in state.items() if not k.startswith(TOWER_PREFIX)}
    tower_file = tower_dir / "model.safetensors"
    if tower_file.exists() and not replace_tower:
        old = load_file(tower_file)
        if set(old) != set(tower) or any(not torch.equal(old[k], tower[k]) for k in tower):
            raise ValueError(f"{tower_file} holds another vision tower; the committed organisms share one "
                             "(train with the tower frozen, or write to another tower folder)")
    else:
        save_file(tower, tower_file)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    processor.save_pretrained(folder)
    save_file(rest, folder / "model.safetensors")
    rel = Path(os.path.relpath(tower_file.resolve(), folder.resolve()))  # relative: the repository can move
    (folder / SHARED_FILE).write_text(json.dumps({"dtype": str(STORED_DTYPE).removeprefix("torch."),
                                                  "vision_tower": {"file": str(rel), "sha256": sha256(tower_file)}},
                                                 indent=1) + "\n")


def tower_file(folder: Path | str) -> Path:
    """The shared tower file an organism folder names, checked against its recorded sha256."""
    folder = Path(folder)
    meta = json.loads((folder / SHARED_FILE).read_text())["vision_tower"]
    path = (folder / meta["file"]).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{folder} needs the shared vision tower {path}, which is missing; restore "
                                "data/models/vision-tower/ (git checkout) or retrain it (make organism-scratch)")
    if sha256(path) != meta["sha256"]:
        raise ValueError(f"the vision tower {path} is not the one {folder} was saved with (sha256 differs); "
                         "restore it or retrain the organism")
    return path


def load(folder: Path | str, attn_implementation: str = "sdpa"):
    """The organism in ``folder`` as a float32 ``LlavaForConditionalGeneration`` (eval mode)."""
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation=attn_implementation,
                                                       dtype=torch.float32)
    state = load_file(folder / "model.safetensors")
    state.update({TOWER_PREFIX + k: v for k, v in load_file(tower_file(folder)).items()})
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    tied = {k for k in missing if k == "lm_head.weight" and config.get_text_config().tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder} does not match its config: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    gen = folder / "generation_config.json"
    if gen.exists():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()
