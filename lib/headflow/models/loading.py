"""Loading models: the embedded organism, a local checkpoint, or a Hugging Face hub id.

``load("organism")`` gives the model trained in this repository; any other name is a local
folder or a hub id, loaded with transformers' ``AutoModelForImageTextToText`` and
``AutoProcessor`` (stock classes only).
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import torch
import transformers
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.processing_utils import ProcessorMixin

from headflow.models import families, llava_builder, organism_store, shadow, tiny
from headflow.util.hashing import files_sha256
from headflow.util.paths import CACHE_DIR, DATA_DIR

MODELS_DIR = DATA_DIR / "models"
ORGANISM_DIR = Path(os.environ.get("HEADFLOW_ORGANISM", MODELS_DIR / "organism"))
# The organisms committed in this repository (chapter 0): name -> folder (stored by
# headflow.models.organism_store: float16, one shared vision tower in data/models/vision-tower/).
#: The committed organisms: name -> folder.
ORGANISMS = {"organism": ORGANISM_DIR, "organism-seed2": MODELS_DIR / "organism-seed2",
             "organism-scratch": MODELS_DIR / "organism-scratch"}
TOWER_DIR = MODELS_DIR / "vision-tower"

# Families whose token groups (tokens.py) and interventions are tested here on tiny models
# (headflow.models.tiny; tests/test_families.py checks that exactly these ran).  headflow.models.families holds
# what differs between families.
TESTED_FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "internvl", "idefics3", "gemma3")


TINY_PREFIX = "tiny:"
TINY_DIR = CACHE_DIR / "tiny"
SHADOW_DIR = CACHE_DIR / "shadows"


def resolve_path(name_or_path: str) -> str:
    """``"organism"`` / ``"organism-scratch"`` -> its folder; ``"tiny:<family>"`` -> the folder of
    that family's tiny random-weight model (:mod:`headflow.models.tiny`, saved on first use, keyed
    by the code that builds it); ``"shadow:<hub id>"`` -> the folder of that checkpoint's shadow
    (:mod:`headflow.models.shadow`, saved on first use, keyed by its sources); a path or hub id is
    returned unchanged."""
    if name_or_path.startswith(shadow.PREFIX):
        checkpoint = name_or_path[len(shadow.PREFIX):]
        shadow.entry(checkpoint)  # a clear error for a checkpoint data/checkpoints.yml does not list
        folder = SHADOW_DIR / f"{checkpoint.replace('/', '__')}-{files_sha256(shadow.sources(checkpoint))[:10]}"
        if not (folder / "config.json").exists():
            shadow.save(checkpoint, folder)
        return str(folder)
    if name_or_path.startswith(TINY_PREFIX):
        family = name_or_path[len(TINY_PREFIX):]
        if family not in tiny.FAMILIES:
            raise ValueError(f"no tiny model for family {family!r}; choose one of "
                             f"{[TINY_PREFIX + f for f in tiny.FAMILIES]}")
        folder = TINY_DIR / f"{family}-{files_sha256([tiny.__file__, llava_builder.__file__])[:10]}"
        if not (folder / "config.json").exists():
            tiny.save(family, folder)
        return str(folder)
    if name_or_path in ORGANISMS:
        folder = ORGANISMS[name_or_path]
        if not (folder / "config.json").exists():
            how = f"make {name_or_path}"
            raise FileNotFoundError(f"the {name_or_path} checkpoint is missing at {folder}; run `{how}` to train it")
        return str(folder)
    return name_or_path


def check_model(name_or_path: str, require_cached: bool = True) -> str:
    """Refuse, before anything loads, a model that is neither a built-in name (:data:`ORGANISMS`,
    ``tiny:<family>``, ``shadow:<hub id>``), an existing folder, nor a hub id ``owner/name`` (which,
    under ``HF_HUB_OFFLINE=1``, must be in the local Hugging Face cache).  The error names the
    nearest built-in names (``organsim`` -> ``organism``); ``require_cached=False`` accepts any
    well-formed hub id (planning a run for another machine).  Returns ``name_or_path``."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"model must be one of {list(ORGANISMS)}, a local folder or a hub id, not {name_or_path!r}")
    if name_or_path in ORGANISMS or name_or_path.startswith((TINY_PREFIX, shadow.PREFIX)) or Path(name_or_path).is_dir():
        return name_or_path
    if name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist (and {name_or_path!r} is not a hub id "
                                "like 'llava-hf/llava-1.5-7b-hf')")
    builtin = list(ORGANISMS) + [TINY_PREFIX + f for f in tiny.FAMILIES]
    near = difflib.get_close_matches(name_or_path, builtin, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else f" Built-in models: {builtin}."
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) is None:
        raise ValueError(f"unknown model {name_or_path!r}: not a built-in name, not an existing folder, and not a "
                         f"hub id of the form 'owner/name'.{hint}")
    if require_cached and _offline():
        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise ValueError(f"model {name_or_path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is "
                             f"set: download it where there is network (`huggingface-cli download {name_or_path}`) or "
                             f"pass a local folder.{hint if near else ''}")
    return name_or_path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load(name_or_path: str = "organism", attn_implementation: str = "sdpa", dtype=None, device: str | None = None):
    """Return ``(model, processor)`` in eval mode, its parameters frozen: every analysis is inference
    (attribution patching takes its gradients to activations, never to weights), so a forward pass
    builds no autograd graph over the weights.

    ``name_or_path``: ``"organism"`` (the default organism), ``"organism-scratch"``, a local folder
    saved with ``save_pretrained``, or a hub id
    such as ``"llava-hf/llava-1.5-7b-hf"`` (needs a local copy when ``HF_HUB_OFFLINE=1``).
    """

    check_model(name_or_path)
    path = resolve_path(name_or_path)
    is_local = Path(path).is_dir()
    looks_like_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) is not None and not path.startswith(".")
    if not is_local and not looks_like_hub_id:
        raise FileNotFoundError(f"model folder {path} does not exist (and {path!r} is not a hub id like "
                                "'llava-hf/llava-1.5-7b-hf')")
    kwargs = {"local_files_only": True} if (not is_local and _offline()) else {}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        if not is_local:
            hint = (" HF_HUB_OFFLINE=1 is set and there is no local copy in the Hugging Face cache: download it "
                    f"first where there is network (`huggingface-cli download {path}`) or pass a local folder."
                    if _offline() else " Check the id, your network, and access rights.")
            raise OSError(f"model {path!r} is not available{' offline' if _offline() else ''}.{hint}") from e
        raise
    if config.model_type not in transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        supported = ", ".join(sorted(transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES))
        raise ValueError(f"unknown model family {config.model_type!r} for {path!r}: it is not an image-text-to-text "
                         f"model in transformers {transformers.__version__}. Known families: {supported}")
    processor = load_processor(path, config.model_type, **kwargs)
    if is_local and organism_store.is_stored(path):  # a committed organism: float16 + the shared tower
        model = organism_store.load(path, attn_implementation)
        if dtype is not None:
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    else:
        model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn_implementation,
                                                            dtype=dtype if dtype is not None else "auto", **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval().requires_grad_(False), processor


def load_processor(path: str, model_type: str, **kwargs):
    """The checkpoint's processor (``AutoProcessor``); for families whose processor also carries a
    video processor (which needs torchvision), an image-only processor where that one cannot load."""

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, ImportError, ValueError) as e:
        fam = families.FAMILIES.get(model_type)
        if fam is None or not fam.video_processor or "video" not in str(e).lower():
            raise

        name = ProcessorMixin.get_processor_dict(path, **kwargs)[0].get("processor_class")
        cls = getattr(transformers, str(name), None)
        if cls is None:
            raise
        return families.image_only_processor(cls).from_pretrained(path, **kwargs)


def text_config(model):
    """The language model's config (``n_layers``, ``n_heads`` ...)."""
    return model.config.get_text_config()


def n_heads(model) -> tuple[int, int]:
    """``(n_layers, n_query_heads)`` of the language model."""
    cfg = text_config(model)
    return cfg.num_hidden_layers, cfg.num_attention_heads
