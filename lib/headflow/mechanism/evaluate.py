"""Clean (un-intervened) answers: final-position logits, accuracy, answer logits.

Everything goes through the model's own processor and chat template, one question for a list of
images, batched.  Only the final position's logits are computed (``logits_to_keep=1``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from headflow.images import fashionscenes as data
from headflow.images.fashionscenes import ANSWER_WORDS
from headflow.task.prompt import QUESTION_TYPES, answer_token_ids, build_prompt, question_text


def _as_pil(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"an image must be a PIL image or an (H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


@torch.inference_mode()
def final_logits(model, processor, images: Sequence, question: str, batch_size: int = 64,
                 progress: bool = False) -> torch.Tensor:
    """Logits ``(N, vocab)`` at the final position for ``question`` asked about each image."""
    prompt = build_prompt(processor, question)
    out = []
    steps = range(0, len(images), batch_size)
    for s in tqdm(steps, desc="clean forward", disable=not progress):
        chunk = [_as_pil(im) for im in images[s:s + batch_size]]
        inputs = processor(images=[[im] for im in chunk], text=[prompt] * len(chunk), return_tensors="pt",
                           padding=True)  # one image per prompt (Gemma 3's processor needs the nesting)
        inputs = inputs.to(model.device)
        logits = model(**inputs, logits_to_keep=1).logits[:, -1]
        out.append(logits.float().cpu())
    return torch.cat(out)


def answer_logits(logits: torch.Tensor, answer_ids: Sequence[int], targets: Sequence[int]) -> dict:
    """Per image: the target logit ``y`` (logit of the correct answer's first token), the
    logit difference to the best wrong answer word, and whether the unrestricted argmax is right.

    ``answer_ids``: first-token id of each candidate answer word; ``targets``: index of the
    correct word for each image.
    """
    ids = torch.as_tensor(list(answer_ids))
    tgt = torch.as_tensor(list(targets))
    cand = logits[:, ids]  # (N, n_answers)
    y = cand.gather(1, tgt[:, None])[:, 0]
    wrong = cand.clone()
    wrong.scatter_(1, tgt[:, None], float("-inf"))
    return {"y": y.numpy(), "logit_diff": (y - wrong.max(1).values).numpy(),
            "correct": (logits.argmax(-1) == ids[tgt]).numpy(),
            "predicted_word_index": cand.argmax(-1).numpy()}


def evaluate(model, processor, images: Sequence, words: Sequence[str], targets: Sequence[int], question: str,
             batch_size: int = 64, progress: bool = False) -> dict:
    """Clean accuracy (unrestricted argmax over the whole vocabulary) and answer logits."""
    ids = answer_token_ids(processor, words, prompt=build_prompt(processor, question))
    logits = final_logits(model, processor, images, question, batch_size, progress)
    res = answer_logits(logits, ids, targets)
    res["accuracy"] = float(res["correct"].mean())
    return res


def wilson_interval(n_correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (exact for this statistic: a share of
    independent yes/no outcomes; sensible at 0 and 1, unlike the normal approximation)."""
    if n <= 0:
        raise ValueError("an accuracy needs at least one image")
    p = n_correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def scene_accuracy(model, processor, split: str, n: int, seed: int, batch_size: int = 100,
                   progress: bool = False) -> dict:
    """Held-out accuracy of a FashionScenes-trained model on ``n`` freshly rendered scenes of
    ``split`` (seed ``seed``), per question type: ``{"accuracy", "ci", "n_eval", "seed", "split",
    "correct"/"predicted" (per question, arrays), "labels" (per question, arrays)}``."""

    specs = data.sample_specs(split, n, seed=seed)
    images, _ = data.render_many(specs)
    labels = {"object": np.array([s.label for s in specs]), "color": np.array([s.color for s in specs]),
              "position": np.array([s.position for s in specs])}
    out = {"n_eval": n, "seed": seed, "split": split, "accuracy": {}, "ci": {}, "correct": {}, "predicted": {},
           "labels": labels}
    for q in QUESTION_TYPES:
        res = evaluate(model, processor, images, ANSWER_WORDS[q], labels[q].tolist(), question_text(q),
                       batch_size=batch_size, progress=progress)
        out["accuracy"][q] = res["accuracy"]
        out["ci"][q] = wilson_interval(int(res["correct"].sum()), n)
        out["correct"][q] = res["correct"]
        out["predicted"][q] = res["predicted_word_index"]
    return out
