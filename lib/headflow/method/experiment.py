"""The per-image experiment the chapters share: one image, one prompt, one target token.

:func:`prepare` turns COCO examples into :class:`ImageTask` objects (processor inputs and the
answer's token ids); :func:`run_attribution` runs the random-mask ablations of every image
through the prefix-reusing fast path, writing each image to a :class:`headflow.store.runstore.RunStore` as it finishes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from headflow.util.devices import to_device
from headflow.mechanism import interventions as iv
from headflow.mechanism.evaluate import append_tokens
from headflow.mechanism.prefix_reuse import PrefixReuse
from headflow.method import attribution
from headflow.models import families
from headflow.store.runstore import RunStore, claimed
from headflow.task.answers import answers as answer_targets
from headflow.task.prompt import build_prompt
from headflow.util.progress import bar

#: The targets y a mask's logits are read as (:func:`target_of`).
TARGETS = ("logit", "logit-diff", "answer-kl")


@dataclass
class ImageTask:
    """One image: its processor inputs (batch of 1: the prompt, then the correct answer's
    teacher-forced tokens, :mod:`headflow.task.answers`), the answer's decision token and the
    competitors' tokens at that position (for the logit-difference target)."""

    key: str
    example: object
    inputs: dict
    target_id: int
    other_ids: list[int]
    n_forced: int = 0  # teacher-forced answer tokens at the end of input_ids (0: decided by the first token)
    clean_logp: torch.Tensor | None = None  # (K,) clean log-probabilities over the answer words (answer-kl target)

    @property
    def class_name(self) -> str:
        return self.example.class_name

    @property
    def prompt_inputs(self) -> dict:
        """The inputs without the teacher-forced answer tokens (what the baseline is built from)."""
        if not self.n_forced:
            return self.inputs
        L = self.inputs["input_ids"].shape[1]
        return {k: v[:, :L - self.n_forced] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == L
                and not k.startswith(("pixel_", "image_")) else v for k, v in self.inputs.items()}


def prepare(processor, examples: Sequence, words: Sequence[str], question: str,
            answers: Sequence[str] | None = None, case: str = "as-labelled") -> list[ImageTask]:
    """An :class:`ImageTask` per example (answer = ``answers[i]``, by default its class name, among ``words``)."""
    prompt = build_prompt(processor, question)
    targets = answer_targets(processor, words, question, case)
    answers = [ex.class_name for ex in examples] if answers is None else list(answers)
    tasks = []
    for ex, answer in zip(examples, answers):
        if answer not in words:
            raise ValueError(f"image {ex.image_id}: answer {answer!r} is not among the answer words {list(words)}")
        a = targets[words.index(answer)]
        inputs = append_tokens(dict(processor(images=[ex.load_image()], text=[prompt], return_tensors="pt")), a.forced)
        tasks.append(ImageTask(key=f"img{ex.image_id:06d}", example=ex, inputs=inputs, target_id=a.target_id,
                               other_ids=list(a.competitor_ids), n_forced=a.decision))
    return tasks


def target_of(task: ImageTask, target: str = "logit"):
    """The per-batch reduction of ``(B, vocab)`` logits to ``y (B,)``: the answer's logit, its
    difference to the best other answer word (what the fast path keeps instead of the vocabulary),
    or (``answer-kl``, a class-agnostic target: the same function for every image) minus the KL
    divergence of the answer distribution (softmax over every answer word's decision token) from the
    clean one, ``-KL(p_clean || p)``, so ``y_clean = 0`` and the image effect is ``KL(p_clean || p_none)``
    (needs ``task.clean_logp``: :func:`masks_y` sets it)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    others = list(task.other_ids)
    if target == "answer-kl":
        if task.clean_logp is None:
            raise ValueError("the answer-kl target needs the clean answer distribution (task.clean_logp); "
                             "masks_y computes it")
        ids = [task.target_id] + others

        def kl(logits: torch.Tensor) -> torch.Tensor:
            ref = task.clean_logp.to(logits.device, torch.float64)
            logp = logits[:, ids].double().log_softmax(-1)
            return -(ref.exp() * (ref - logp)).sum(-1)
        return kl

    def reduce(logits: torch.Tensor) -> torch.Tensor:
        y = logits[:, task.target_id]
        if target == "logit-diff":
            y = y - logits[:, others].max(-1).values
        return y
    return reduce


def target_values(logits: torch.Tensor, task: ImageTask, target: str = "logit") -> np.ndarray:
    """``y`` per row of ``logits (M, vocab)`` as float64 on the CPU (:func:`target_of`)."""
    return target_of(task, target)(logits).double().cpu().numpy()


def as_y(values: torch.Tensor) -> np.ndarray:
    """Reduced values (already ``y``) as float64 numpy."""
    return values.double().cpu().numpy()


def reference_baseline(model, tasks: Sequence[ImageTask], kind: str, batch_size: int = 16) -> iv.Baseline:
    """The ablation baseline: ``dataset-mean`` over the given reference images, or ``image-mean``/``zero``."""
    if kind != "dataset-mean":
        return iv.Baseline(kind)
    batches = []
    for s in range(0, len(tasks), batch_size):
        group = tasks[s:s + batch_size]
        batches.append({k: torch.cat([t.prompt_inputs[k] for t in group]) for k in group[0].inputs})
    return iv.dataset_mean_baseline(model, batches)


def masks_y_raw(model, task: ImageTask, baseline: iv.Baseline, keep: torch.Tensor, ids: Sequence[int],
                scope: str = "text", reuse: PrefixReuse | None = None) -> torch.Tensor:
    """The logits of the tokens ``ids`` under each keep-mask: ``(M, len(ids))`` on the CPU."""
    pick = lambda logits: logits[:, list(ids)]  # noqa: E731
    if scope == "all" or (reuse is None and families.prefix_reuse_problem(model, task.inputs["input_ids"].shape[1])):
        return full_logits(model, task, baseline, keep, scope, 32, reduce=pick)
    return (reuse or PrefixReuse(model, task.inputs, baseline)).final_logits(keep, len(keep), reduce=pick).cpu()


def masks_y(model, task: ImageTask, baseline: iv.Baseline, keep: torch.Tensor, target: str | Sequence[str] = "logit",
            batch_size: int = 128, reuse: PrefixReuse | None = None, scope: str = "text") -> np.ndarray:
    """``y`` under each keep-mask ``(M, n_layers, n_heads)``: through the fast path for scope
    ``text``; by batched full forwards for scope ``all`` (image queries see the baseline too, so
    the image prefix changes and cannot be reused) and where the family makes prefix reuse invalid
    (:func:`headflow.models.families.prefix_reuse_problem`: PaliGemma's prefix-LM mask, short sliding windows).
    ``target`` one name: ``(M,)``; several (:data:`TARGETS`): ``(M, n_targets)`` from the same passes, each
    column equal to that target's own call."""
    names = [target] if isinstance(target, str) else list(target)
    if not names:
        raise ValueError(f"give at least one target of {TARGETS}")
    if "answer-kl" in names and task.clean_logp is None:  # the clean answer distribution, once per task
        clean = torch.ones(1, *keep.shape[1:], dtype=torch.bool, device="cpu")
        ids = [task.target_id] + list(task.other_ids)
        logits = (masks_y_raw(model, task, baseline, clean, ids, scope, reuse))
        task.clean_logp = logits[0].double().log_softmax(-1).cpu()
    reducers = [target_of(task, t) for t in names]
    reduce = reducers[0] if isinstance(target, str) else \
        (lambda logits: torch.stack([r(logits).double() for r in reducers], -1))  # noqa: E731
    if scope == "all":
        return as_y(full_logits(model, task, baseline, keep, "all", min(batch_size, 32), reduce=reduce))
    if scope != "text":
        raise ValueError(f"unknown ablation scope {scope!r}; choose one of {iv.SCOPES}")
    if reuse is None and families.prefix_reuse_problem(model, task.inputs["input_ids"].shape[1]):
        return as_y(full_logits(model, task, baseline, keep, "text", min(batch_size, 32), reduce=reduce))
    reuse = reuse or PrefixReuse(model, task.inputs, baseline)
    return as_y(reuse.final_logits(keep, batch_size, reduce=reduce))


def repeat_inputs(inputs: dict, B: int) -> dict:
    """One prompt's processor inputs as a batch of ``B`` copies: image tensors (``pixel_*``,
    ``image_*``) repeated along dim 0, as Qwen2-VL's flattened patches and ``image_grid_thw`` and
    Idefics3's ``pixel_attention_mask`` need; the per-position ones expanded without copying."""
    return {k: v.repeat(B, *[1] * (v.dim() - 1)) if k.startswith(("pixel_", "image_")) else
            v.expand(B, *v.shape[1:]) for k, v in inputs.items()}


@torch.inference_mode()
def full_logits(model, task: ImageTask, baseline: iv.Baseline, keep: torch.Tensor, scope: str = "text",
                batch_size: int = 32, reduce=None) -> torch.Tensor:
    """Final-position logits ``(M, vocab)`` under each keep-mask, by full forwards (batches of
    ``batch_size`` copies of the image and prompt), or their per-batch ``reduce`` (as
    :meth:`headflow.mechanism.prefix_reuse.PrefixReuse.final_logits`); on the CPU, float32."""
    out = []
    for s in range(0, len(keep), batch_size):
        chunk = torch.as_tensor(keep[s:s + batch_size], device=model.device)
        B = len(chunk)
        inputs = to_device(repeat_inputs(task.inputs, B), model.device)
        abl = iv.HeadAblation(chunk, iv.image_mask(model, inputs["input_ids"]), baseline, scope)
        with iv.intervene(model, ablation=abl):
            logits = model(**inputs, logits_to_keep=1).logits[:, -1]
        out.append((logits if reduce is None else reduce(logits)).to(device="cpu", dtype=torch.float32, copy=True))
    return torch.cat(out)


def run_attribution(model, tasks: Sequence[ImageTask], baseline: iv.Baseline, store: RunStore | dict, n_masks: int,
                    ablation_rate: float, seed: int, target: str = "logit", batch_size: int = 128,
                    progress: bool = True, scope: str = "text") -> dict[str, dict]:
    """Random-mask ablations of every image: per image ``keep (S, L, H)``, ``y (S,)``,
    ``y_clean`` and ``y_none``.  Finished images are read back from ``store``; each image is one
    :func:`attribution_unit` (resumable inside itself).  The progress bar counts masks (each image's
    ``n_masks`` and its two ends), advancing as each part of a unit is written.

    ``store`` a dict ``{target: RunStore}`` (``target`` ignored): every target from the same passes, each
    store holding exactly what a run for its target alone would; returns ``{target: {key: run}}``."""
    stores = store if isinstance(store, dict) else {target: store}
    per_unit, step = n_masks + 2, 4 * batch_size  # attribution_unit's parts: part_batches * batch_size masks
    with bar(total=len(tasks) * per_unit, desc="head attribution (masks)", unit="mask", show=progress) as pbar:
        for task in tasks:
            if all(s.done(task.key) for s in stores.values()):
                pbar.update(per_unit)
                continue
            done = [0]

            def advance(_key, index, done=done):
                n = min(step, per_unit - index * step)
                done[0] += n
                pbar.update(n)
            attribution_unit(model, task, baseline, stores, n_masks, ablation_rate, seed, target, batch_size,
                             scope=scope, after_part=advance)
            pbar.update(per_unit - done[0])  # parts found written by an earlier, interrupted run
    runs = {name: {t.key: load_run(s, t.key) for t in tasks} for name, s in stores.items()}
    return runs if isinstance(store, dict) else runs[target]


def unit_masks(n_layers: int, n_heads: int, n_masks: int, ablation_rate: float, seed: int,
               image_id: int) -> torch.Tensor:
    """The masks of one image's unit: ``n_masks`` random keep-masks (seeded by ``seed`` and the
    image), then all kept (``y_clean``) and none kept (``y_none``): ``(n_masks + 2, L, H)``."""
    keep = attribution.sample_masks(n_masks, n_layers, n_heads, ablation_rate, seed * 1_000_003 + int(image_id))
    ends = torch.stack([torch.ones(n_layers, n_heads, dtype=torch.bool, device="cpu"),
                        torch.zeros(n_layers, n_heads, dtype=torch.bool, device="cpu")])
    return torch.cat([keep, ends])


def attribution_unit(model, task: ImageTask, baseline: iv.Baseline, store: RunStore | dict, n_masks: int,
                     ablation_rate: float, seed: int, target: str = "logit", batch_size: int = 128,
                     part_batches: int = 4, scope: str = "text", after_part=None) -> None:
    """One image's random-mask ablations into ``store`` under ``task.key``.

    The masks are written in parts of ``part_batches * batch_size`` masks as they finish; a unit
    interrupted anywhere (even ``kill -9``) restarts at its first missing part, and is merged into
    one entry when every part exists.  Parts are whole batches, so the values equal those of an
    uninterrupted run with the same batch size and threads, bit for bit.  ``after_part(key, index)``
    is called after each part is written (a test's fault hook).  ``store`` a dict ``{target: RunStore}``:
    the targets not yet stored are computed from the same passes, each into its own store.  The unit is
    claimed in every store while it runs (:meth:`headflow.store.runstore.RunStore.claim`): a process
    beside this one that needs it waits, then reads it."""
    every = store if isinstance(store, dict) else {target: store}
    with claimed(every.values(), task.key):
        _attribution_unit({t: s for t, s in every.items() if not s.done(task.key)}, model, task, baseline, n_masks,
                          ablation_rate, seed, batch_size, part_batches, scope, after_part)


def _attribution_unit(stores: dict, model, task, baseline, n_masks, ablation_rate, seed, batch_size, part_batches,
                      scope, after_part) -> None:
    if not stores:
        return
    names = list(stores)
    n_layers, n_heads = iv.text_layers_and_heads(model)
    keep = unit_masks(n_layers, n_heads, n_masks, ablation_rate, seed, task.example.image_id)
    step = part_batches * batch_size
    starts = list(range(0, len(keep), step))
    reuse = None
    fast = scope == "text" and not families.prefix_reuse_problem(model, task.inputs["input_ids"].shape[1])
    for index, s in enumerate(starts):
        missing = [t for t in names if not stores[t].part_done(task.key, index)]
        if not missing:
            continue
        if reuse is None and fast:  # the image prefix, once per unit (and once more after a restart)
            reuse = PrefixReuse(model, task.inputs, baseline)
        y = masks_y(model, task, baseline, keep[s:s + step], missing, batch_size, reuse=reuse, scope=scope)
        for j, t in enumerate(missing):
            stores[t].save_part(task.key, index, y=np.ascontiguousarray(y[:, j]))
        if after_part is not None:
            after_part(task.key, index)
    mask_keep = keep[:-2]
    for t, st_ in stores.items():
        if st_.done(task.key):  # another worker merged it meanwhile
            continue
        y = np.concatenate([st_.load_part(task.key, i)["y"] for i in range(len(starts))])
        st_.save(task.key, keep=np.packbits(mask_keep.numpy(), axis=-1), shape=np.array(mask_keep.shape), y=y[:-2],
                 y_clean=y[-2], y_none=y[-1])
        st_.drop_parts(task.key)


def load_run(store: RunStore, key: str) -> dict:
    """One image of a run store, with ``keep`` unpacked to ``(S, L, H)`` bool."""
    z = store.load(key)
    S, L, H = z["shape"].tolist()
    z["keep"] = np.unpackbits(z["keep"], axis=-1, count=H).astype(bool).reshape(S, L, H)
    return z
