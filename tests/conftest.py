import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.manual_seed(0)

from headflow.models import llava_builder
from headflow.models import loading as models

# Tests that may be skipped in CI (CI=true): they need CUDA, which CI does not have.  Any other
# skip fails the run there: a skipped test is a test that did not pass.
CUDA_ONLY = ("test_fast_path_in_bfloat16_on_cuda",  # runs where CUDA is
             "test_cli_refuses_cuda_without_cuda")  # runs where CUDA is not


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if in_ci and rep.skipped and item.originalname not in CUDA_ONLY:
        rep.outcome = "failed"
        rep.longrepr = f"skipped in CI, which counts as a failure (only {CUDA_ONLY or 'no tests'} may skip): {rep.longrepr}"


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # no tests is not a pass


TINY = llava_builder.LlavaArch(vision_hidden=32, vision_layers=2, vision_heads=2, text_hidden=64, text_intermediate=128,
                               text_layers=2, text_heads=4)


@pytest.fixture(scope="session")
def tiny_llava():
    """A tiny random-weight LLaVA (organism geometry: 64x64 images, 64 image tokens)."""
    processor = llava_builder.build_processor()
    model = llava_builder.build_model(processor, TINY).eval()
    return model, processor


@pytest.fixture(scope="session")
def organism_model():
    if not (models.ORGANISM_DIR / "config.json").exists():
        pytest.fail("the organism checkpoint is missing: run `make organism`")
    return models.load("organism")
