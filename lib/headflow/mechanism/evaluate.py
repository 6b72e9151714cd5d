"""Clean (un-intervened) answers: final-position logits, accuracy, answer logits.

Everything goes through the model's own processor and chat template, one question for a list of
images, batched.  Only the final position's logits are computed (``logits_to_keep=1``).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from headflow.util.devices import to_device
from headflow.images import fashionscenes as data
from headflow.images.fashionscenes import ANSWER_WORDS
from headflow.task.answers import answers
from headflow.task.judge import SENTENCE_TOKENS, Judge
from headflow.task.prompt import QUESTION_TYPES, build_prompt, question_text
from headflow.util.progress import bar


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
    for s in bar(steps, desc="clean forward", show=progress):
        inputs = to_device(_inputs(processor, images[s:s + batch_size], prompt), model.device)
        logits = model(**inputs, logits_to_keep=1).logits[:, -1]
        out.append(logits.float().cpu())
    return torch.cat(out)


def answer_logits(logits: torch.Tensor, answer_ids: Sequence[int], targets: Sequence[int]) -> dict:
    """Per image, for answers decided by their first token: the target logit ``y`` (logit of the
    correct answer's first token), the logit difference to the best wrong answer word, whether the
    unrestricted argmax is right, and the best answer word by its first-token logit.

    ``answer_ids``: first-token id of each candidate answer word; ``targets``: index of the
    correct word for each image.
    """
    logits = logits.cpu()
    ids = torch.as_tensor(list(answer_ids), device="cpu")
    tgt = torch.as_tensor(list(targets), device="cpu")
    cand = logits[:, ids]  # (N, n_answers)
    y = cand.gather(1, tgt[:, None])[:, 0]
    wrong = cand.clone()
    wrong.scatter_(1, tgt[:, None], float("-inf"))
    return {"y": y.numpy(), "logit_diff": (y - wrong.max(1).values).numpy(),
            "correct": (logits.argmax(-1) == ids[tgt]).numpy(),
            "predicted_word_index": cand.argmax(-1).numpy()}


def _inputs(processor, images: Sequence, prompt: str, forced: Sequence[int] = ()) -> dict:
    """Processor inputs of ``prompt`` with each image, then the ``forced`` answer tokens appended."""
    inputs = processor(images=[[_as_pil(im)] for im in images], text=[prompt] * len(images), return_tensors="pt",
                       padding=True)  # one image per prompt (Gemma 3's processor needs the nesting)
    return dict(append_tokens(dict(inputs), forced))


def append_tokens(inputs: dict, forced: Sequence[int]) -> dict:
    """``inputs`` with the token ids ``forced`` appended to every row; every other per-position input
    (attention mask, token type ids) takes the value of the row's last prompt position (text)."""
    if not len(forced):
        return inputs
    ids = inputs["input_ids"]
    B, L = ids.shape
    extra = torch.as_tensor(list(forced), dtype=ids.dtype).expand(B, -1)
    out = {}
    for k, v in inputs.items():
        if torch.is_tensor(v) and v.dim() == 2 and v.shape == (B, L) and not k.startswith(("pixel_", "image_")):
            out[k] = torch.cat([v, extra if k == "input_ids" else v[:, -1:].expand(B, len(forced))], 1)
        else:
            out[k] = v
    return out


@torch.inference_mode()
def decision_logits(model, processor, images: Sequence, question: str, answers: Sequence,
                    targets: Sequence[int], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``y`` and the logit difference of each image whose correct answer is decided after its first
    token: one teacher-forced forward (prompt + the answer's forced tokens), images grouped by class."""
    prompt = build_prompt(processor, question)
    y, diff = np.full(len(images), np.nan), np.full(len(images), np.nan)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        if answers[t].decision > 0:
            by_class.setdefault(t, []).append(i)
    for t, rows in by_class.items():
        a = answers[t]
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            inputs = to_device(_inputs(processor, [images[i] for i in chunk], prompt, a.forced), model.device)
            logits = model(**inputs, logits_to_keep=1).logits[:, -1].float().cpu()
            y[chunk] = logits[:, a.target_id].double().numpy()
            diff[chunk] = (logits[:, a.target_id] - logits[:, list(a.competitor_ids)].max(-1).values).double().numpy()
    return y, diff


@torch.inference_mode()
def greedy_answers(model, processor, images: Sequence, question: str, max_new_tokens: int, batch_size: int = 64,
                   progress: bool = False) -> tuple[torch.Tensor, list[list[int]]]:
    """What the model says: a greedy decode of ``max_new_tokens`` tokens per image with the stock
    ``generate``.  Returns the final-position logits ``(N, vocab)`` of the prompt (the decode's first
    step, raw) and the generated ids of each image."""
    prompt = build_prompt(processor, question)
    tok = getattr(processor, "tokenizer", processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    first, out = [], []
    for s in bar(range(0, len(images), batch_size), desc="greedy answers", show=progress):
        inputs = to_device(_inputs(processor, images[s:s + batch_size], prompt), model.device)
        n = inputs["input_ids"].shape[1]
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                             output_logits=True, return_dict_in_generate=True)
        first.append(gen.logits[0].float().cpu())
        out.extend(gen.sequences[:, n:].cpu().tolist())
    return torch.cat(first), out


def said(tokenizer, ids: Sequence[int], end_ids: Sequence[int] = ()) -> tuple[str, bool]:
    """The text of a decoded answer cut at the first end-of-answer or special token, and whether the
    answer ended there (or at a line break or sentence end) within the decode (``False``: the decode
    budget cut it, its last word may be a fragment)."""
    stop = set(end_ids) | set(tokenizer.all_special_ids)
    kept, ended = [], False
    for i in ids:
        if i in stop:
            ended = True
            break
        kept.append(i)
    text = tokenizer.decode(kept)
    return text, ended or bool(re.search(r"\S[\n.!?]", text))


def evaluate(model, processor, images: Sequence, words: Sequence[str], targets: Sequence[int], question: str,
             batch_size: int = 64, progress: bool = False, case: str = "as-labelled") -> dict:
    """Clean answers of every image (:mod:`headflow.task.answers`): ``y`` and ``logit_diff`` of the
    correct answer's decision token (the final position's logits are those of the decode's first
    step, which equal a plain forward's: a test checks it on the organism), ``correct`` (the greedy
    answer names the class, by :class:`headflow.task.judge.Judge`; the decode runs
    :data:`headflow.task.judge.SENTENCE_TOKENS` beyond the longest answer, so a sentence ends), ``said``
    (the normalised greedy answer), ``predicted_word_index`` (the class the answer says, else the best
    class by its first-token logit) and ``accuracy``."""
    ans = answers(processor, words, question, case)
    judge = Judge(words)
    logits, generated = greedy_answers(model, processor, images, question,
                                       max(len(a.tokens) for a in ans) + SENTENCE_TOKENS, batch_size, progress)
    res = answer_logits(logits, [a.tokens[0] for a in ans], targets)
    late_y, late_diff = decision_logits(model, processor, images, question, ans, targets, batch_size)
    late = ~np.isnan(late_y)
    res["y"] = np.where(late, late_y.astype(res["y"].dtype), res["y"])
    res["logit_diff"] = np.where(late, late_diff.astype(res["logit_diff"].dtype), res["logit_diff"])
    tok = getattr(processor, "tokenizer", processor)
    ends = {a.tokens[-1] for a in ans}
    spoken = [said(tok, ids, ends) for ids in generated]
    named = [judge.classify(text, ended) for text, ended in spoken]
    named = [-1 if c is None else c for c in named]
    res["said"] = [judge.phrase(text, ended) for text, ended in spoken]
    res["correct"] = np.array([c == t for c, t in zip(named, targets)], dtype=bool)
    res["predicted_word_index"] = np.where(np.array(named) >= 0, named, res["predicted_word_index"])
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
                   progress: bool = False, objects=1, specs=None) -> dict:
    """Held-out accuracy of a FashionScenes-trained model on ``n`` freshly rendered scenes of
    ``split`` (seed ``seed``, ``objects`` items per scene as in
    :func:`headflow.images.fashionscenes.sample_specs`; or the given ``specs``), per question
    type: ``{"accuracy", "ci", "n_eval", "seed", "split", "objects", "correct"/"predicted" (per
    question, arrays), "labels" (per question, arrays)}``."""

    specs = specs if specs is not None else data.sample_specs(split, n, seed=seed, objects=objects)
    n = len(specs)
    images, _ = data.render_many(specs)
    labels = {"object": np.array([s.label for s in specs]), "color": np.array([s.color for s in specs]),
              "position": np.array([s.position for s in specs])}
    out = {"n_eval": n, "seed": seed, "split": split, "objects": list(objects) if not isinstance(objects, int) else objects,
           "accuracy": {}, "ci": {}, "correct": {}, "predicted": {}, "labels": labels}
    for q in QUESTION_TYPES:
        res = evaluate(model, processor, images, ANSWER_WORDS[q], labels[q].tolist(), question_text(q),
                       batch_size=batch_size, progress=progress)
        out["accuracy"][q] = res["accuracy"]
        out["ci"][q] = wilson_interval(int(res["correct"].sum()), n)
        out["correct"][q] = res["correct"]
        out["predicted"][q] = res["predicted_word_index"]
    return out
