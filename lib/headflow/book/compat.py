"""The family-compatibility table: each tested family's capabilities, measured on its tiny model.

The same checks as ``tests/test_families.py`` (which adds the float64 reference and the
patch-layout perturbation), run here so that the reproducibility appendix shows measured
figures, not claims: for each family, on two FashionScenes images,

- ``token groups``: every group resolves from the processor's output, object and background
  from the family's patch layout (non-patch slots in neither);
- ``ablation``: an empty ablation is bit-identical, a real one changes the answer, and with
  every head ablated (scope text) the two images give the same logits (zero and dataset-mean
  baselines): ``no_leak`` is the largest difference;
- ``knockout``: blocking final -> image in every layer changes the answer;
- ``fast path``: prefix reuse equals full forwards (largest difference over 6 masks), or the
  reason it refuses (then chapters use batched full forwards);
- ``processor``: built offline from the family's own classes (``image-only`` where the stock
  processor would need torchvision for its video processor).

    table = compat.table()        # a pandas DataFrame, one row per family
"""
from __future__ import annotations

import pandas as pd
import torch

from headflow.images import coco
from headflow.mechanism import interventions as iv
from headflow.mechanism import tokens
from headflow.mechanism.prefix_reuse import PrefixReuse
from headflow.method import experiment
from headflow.models import families, tiny
from headflow.models.loading import TESTED_FAMILIES
from headflow.task.prompt import build_prompt, question_text


def _batch(processor, images):
    prompt = build_prompt(processor, question_text("object"))
    return processor(images=[[im] for im in images], text=[prompt] * len(images), return_tensors="pt",
                     padding=True)


def known_words(processor, words: list[str]) -> list[str]:
    """The ``words`` that ``processor``'s tokenizer holds (no unknown token): a word-level vocabulary
    without a class name (the tiny families' before they held the merged class) is asked only about
    images of the classes it can name."""
    tok = processor.tokenizer
    return [w for w in words if tok.unk_token_id not in tok(w, add_special_tokens=False)["input_ids"]]


@torch.inference_mode()
def check_family(family: str) -> dict:
    """Measured capabilities of ``family``'s tiny model (see the module docstring)."""
    model, processor = tiny.build(family)
    iv.install(model, "sdpa")
    set_file = coco.resolve_set("fashionscenes/eval")
    words = known_words(processor, coco.class_names(set_file))
    exs = [e for e in coco.load_set(set_file) if e.class_name in words][:4]
    batch = _batch(processor, [e.load_image() for e in exs[:2]])
    n_l, n_h = iv.text_layers_and_heads(model)
    span = iv.image_mask(model, batch["input_ids"])
    g = tokens.resolve(processor, model, question_text("object"), _batch(processor, [exs[0].load_image()]),
                       mask=exs[0].mask)
    plain = model(**batch).logits[:, -1]
    ref = experiment.reference_baseline(model, experiment.prepare(processor, exs[2:], words,
                                                                  question_text("object")), "dataset-mean")

    def ablated(keep, baseline):
        with iv.intervene(model, ablation=iv.HeadAblation(keep, span, baseline)):
            return model(**batch).logits[:, -1]
    empty = ablated(torch.ones(2, n_l, n_h, dtype=torch.bool), ref)
    none = torch.zeros(2, n_l, n_h, dtype=torch.bool)
    no_leak = max(float((ablated(none, b)[0] - ablated(none, b)[1]).abs().max()) for b in (iv.Baseline("zero"), ref))
    final = torch.zeros_like(span)
    final[:, -1] = True
    with iv.intervene(model, knockouts=[iv.Knockout(final, span, layers=list(range(n_l)))]):
        knocked = model(**batch).logits[:, -1]
    task = experiment.prepare(processor, exs[:1], words, question_text("object"))[0]
    keep = torch.rand(6, n_l, n_h, generator=torch.Generator().manual_seed(0)) >= 0.5
    problem = families.prefix_reuse_problem(model, task.inputs["input_ids"].shape[1])
    fast = None
    if problem is None:
        got = PrefixReuse(model, task.inputs, ref).final_logits(keep)
        fast = float((got - experiment.full_logits(model, task, ref, keep)).abs().max())
    fam = families.family_of(model)
    layout = families.patch_layout(model, processor, _batch(processor, [exs[0].load_image()]), exs[0].mask.shape)
    return {
        "family": family, "model class": type(model).__name__, "processor": type(processor).__name__
        + (" (image-only)" if fam.video_processor else ""),
        "image tokens": g.sizes["image"], "span": int(span[0].sum()), "views": len(layout.views),
        "object/background": f"{g.sizes['object']}/{g.sizes['background']}",
        "empty ablation bit-identical": bool(torch.equal(empty, plain)),
        "no_leak (max |diff|)": f"{no_leak:.1e}",
        "knockout changes answer": bool((knocked - plain).abs().max() > 1e-4),
        "fast path (max |fast - full|)": f"{fast:.1e}" if fast is not None else f"refused: {problem}",
        "positions": fam.positions,
    }


def table(names=None):
    """One row per family (default: every tested family), as a pandas DataFrame."""

    return pd.DataFrame([check_family(f) for f in (names or TESTED_FAMILIES)]).set_index("family")
