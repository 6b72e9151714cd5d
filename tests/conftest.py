import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.manual_seed(0)

from headflow import models, organism  # noqa: E402

TINY = organism.Recipe(vision_hidden=32, vision_layers=2, vision_heads=2, text_hidden=64, text_intermediate=128,
                       text_layers=2, text_heads=4)


@pytest.fixture(scope="session")
def tiny_llava():
    """A tiny random-weight LLaVA (organism geometry: 64x64 images, 64 image tokens)."""
    processor = organism.build_processor()
    model = organism.build_model(processor, TINY).eval()
    return model, processor


@pytest.fixture(scope="session")
def organism_model():
    if not (models.ORGANISM_DIR / "config.json").exists():
        pytest.fail("the organism checkpoint is missing: run `make organism`")
    return models.load("organism")
