"""Chapter 0's measurements of an organism beyond accuracy: does the task need the main object found?

- :func:`tower_probes`: linear probes on the vision tower's *mean* patch feature (the feature a
  head that averages the image would read) and on the main object's own tokens (what a head that
  found it would read), for the main object's class, colour and position, trained on train-split
  scenes and scored on held-out test-split scenes;
- :func:`counterfactual`: on scenes whose main object and largest other item swapped sizes
  (:func:`headflow.images.fashionscenes.swap_sizes`), whether the organism's answer follows the
  new main object or the old one;
- :func:`text_after_stages`: the text task's accuracy after every training stage (from the log).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from headflow.images import fashionscenes as data
from headflow.mechanism import evaluate
from headflow.method.experiment import masks_y_raw
from headflow.models.llava_builder import to_pixels
from headflow.task.prompt import QUESTION_TYPES, question_text
from headflow.util.devices import to_numpy

_KEYS = {"object": "label", "color": "color", "position": "position"}


@torch.inference_mode()
def tower_tokens(model, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """``(N, T, d)``: the vision tower's patch tokens at the layer the projector reads, for
    ``images`` ``(N, H, W, 3) uint8`` (T = 64 on the organism)."""
    tower = model.model.vision_tower
    out = []
    for s in range(0, len(images), batch_size):
        px = to_pixels(images[s:s + batch_size]).to(device=model.device, dtype=model.dtype)
        h = tower(px, output_hidden_states=True).hidden_states[model.config.vision_feature_layer][:, 1:]
        out.append(to_numpy(h.float()))
    return np.concatenate(out)


def mean_features(model, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """``(N, d)``: the patch tokens (:func:`tower_tokens`) averaged over the image (what a head
    that averages the image reads)."""
    return tower_tokens(model, images, batch_size).mean(1)


def object_features(tokens: np.ndarray, masks: np.ndarray, min_cover: float = 0.5) -> np.ndarray:
    """``(N, d)``: the mean of the tokens ``(N, T, d)`` whose patch the main object's visible mask
    ``(N, H, W)`` covers at least ``min_cover`` of (the most covered patch where none does): what a
    head that found the main object reads."""
    n, t, _ = tokens.shape
    side = int(round(t ** 0.5))
    ph, pw = masks.shape[1] // side, masks.shape[2] // side
    cover = masks.reshape(n, side, ph, side, pw).mean((2, 4)).reshape(n, t)
    w = (cover >= min_cover).astype(np.float64)
    none = w.sum(1) == 0
    w[none] = cover[none] == cover[none].max(1, keepdims=True)
    return np.einsum("nt,ntd->nd", w / w.sum(1, keepdims=True), tokens)


def _probe(f_tr, y_tr, f_te, y_te, n_classes: int | None = None):
    # standardised features: lbfgs converges on them (on the raw tower features it stopped at its limit)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    pred = probe.fit(f_tr, y_tr).predict(f_te)
    k = int((pred == y_te).sum())
    conf = np.zeros((n_classes or int(max(y_te.max(), pred.max())) + 1,) * 2, np.int64)
    np.add.at(conf, (y_te, pred), 1)
    return k / len(y_te), evaluate.wilson_interval(k, len(y_te)), conf


def tower_probes(model, n_train: int = 3000, n_test: int = 1000, objects=(2, 3), seed: int = 0) -> dict:
    """Accuracy (with 95% Wilson interval) of multinomial logistic probes per question type, trained
    on ``n_train`` train-split scenes and scored on ``n_test`` test-split scenes (seeds ``seed + 11``
    and ``seed + 12``), ``objects`` items per scene, on two read-outs of the vision tower:
    ``"pooled"`` (:func:`mean_features`) and ``"main_object_tokens"`` (:func:`object_features`,
    given the main object's mask).  Returns ``{"n_train", "n_test", "objects", "pooled":
    {"accuracy", "ci", "confusion"}, "main_object_tokens": {...}}``; ``confusion[q]`` counts test
    scenes by (true, predicted) answer index, from which per-class accuracy and its interval follow."""
    train = data.sample_specs("train", n_train, seed + 11, objects=objects)
    test = data.sample_specs("test", n_test, seed + 12, objects=objects)
    feats = {}
    for split, specs in (("train", train), ("test", test)):
        images, masks = data.render_many(specs)
        tok = tower_tokens(model, images)
        feats[split] = {"pooled": tok.mean(1), "main_object_tokens": object_features(tok, masks)}
    out = {"n_train": n_train, "n_test": n_test, "objects": list(objects)}
    for readout in ("pooled", "main_object_tokens"):
        out[readout] = {"accuracy": {}, "ci": {}, "confusion": {}}
        for q in QUESTION_TYPES:
            y_tr = np.array([getattr(s, _KEYS[q]) for s in train])
            y_te = np.array([getattr(s, _KEYS[q]) for s in test])
            acc, ci, conf = _probe(feats["train"][readout], y_tr, feats["test"][readout], y_te,
                                   len(data.ANSWER_WORDS[q]))
            out[readout]["accuracy"][q], out[readout]["ci"][q] = acc, ci
            out[readout]["confusion"][q] = conf.tolist()
    return out


def swapped_scenes(specs: list, per_class: int) -> tuple[list, int]:
    """The counterfactual scenes of the first ``per_class`` scenes of each main-object class in
    ``specs`` (:func:`headflow.images.fashionscenes.swap_sizes`): ``([(swapped spec, old_main)],
    n_left_out)``, ``old_main`` the former main object's ``{"object", "color"}``."""
    seen: dict[int, int] = {}
    pairs, left_out = [], 0
    for s in specs:
        if seen.get(s.label, 0) >= per_class:
            continue
        seen[s.label] = seen.get(s.label, 0) + 1
        w = data.swap_sizes(s)
        if w is None:
            left_out += 1
        else:
            pairs.append((w, {"object": s.class_name, "color": s.color_name}))
    return pairs, left_out


def counterfactual(model, processor, swapped: list, batch_size: int = 100) -> dict:
    """On size-swapped scenes (``swapped``: ``(spec, old_main)`` pairs; ``old_main`` the former main
    object's ``{"object", "color"}``), per question type (object, colour): the share of answers
    naming the new main object (``follows_main``) and the former one (``follows_old``), with 95%
    Wilson intervals, over the scenes where the two differ in that attribute."""
    out = {}
    for q, key, words in (("object", "label", data.CLASSES), ("color", "color", data.COLOR_NAMES)):
        rows = [(s, words.index(old[q])) for s, old in swapped if getattr(s, key) != words.index(old[q])]
        specs = [s for s, _ in rows]
        images, _ = data.render_many(specs)
        new = [getattr(s, key) for s in specs]
        res = evaluate.evaluate(model, processor, images, words, new, question_text(q), batch_size=batch_size)
        said = np.asarray(res["predicted_word_index"])
        n = len(specs)
        k_new, k_old = int((said == np.array(new)).sum()), int((said == np.array([o for _, o in rows])).sum())
        out[q] = {"n": n, "follows_main": k_new / n, "follows_main_ci": evaluate.wilson_interval(k_new, n),
                  "follows_old": k_old / n, "follows_old_ci": evaluate.wilson_interval(k_old, n)}
    return out


@torch.inference_mode()
def ablated_accuracy(st) -> dict:
    """Chapter 0's check that the answer needs the image flow: on the study's images (``st.tasks``, its
    baseline), the share answered correctly with every head's image flow ablated (the answer words'
    decision tokens, as ``y_none`` is read) and with none ablated, with 95% Wilson intervals, beside chance
    (one over the number of answer words; the evaluation set is class-balanced)."""
    none = torch.zeros(1, st.n_layers, st.n_heads, dtype=torch.bool, device="cpu")
    every = torch.ones_like(none)
    hits = {"ablated": 0, "clean": 0}
    for t in st.tasks:
        ids = [t.target_id] + list(t.other_ids)
        y = masks_y_raw(st.model, t, st.baseline, torch.cat([none, every]), ids)
        hits["ablated"] += int(y[0].argmax() == 0)
        hits["clean"] += int(y[1].argmax() == 0)
    n = len(st.tasks)
    return {"n": n, "accuracy": hits["ablated"] / n, "ci": evaluate.wilson_interval(hits["ablated"], n),
            "clean_accuracy": hits["clean"] / n, "clean_ci": evaluate.wilson_interval(hits["clean"], n),
            "chance": 1 / len(st.words), "baseline": st.meta.get("baseline")}


def text_after_stages(log: dict) -> dict | None:
    """``{stage: {question: accuracy, "all": ...}}`` from a training log (None for logs before it was kept),
    with ``kept``: the final stage's accuracy over the ``text`` stage's (overall)."""
    after = log.get("text_retrieval_after_stage")
    if not after or "text" not in after:
        return None
    last = list(after)[-1]
    return {**after, "kept": after[last]["all"] / after["text"]["all"] if after["text"]["all"] > 0 else None,
            "task": log["recipe"].get("text_task", "flat")}


# ------------------------------------------------------------------------------------ tables (chapter 0)
def _ci(v, lohi, pct=True) -> str:
    return f"{v:.1%} [{lohi[0]:.1%}, {lohi[1]:.1%}]" if pct else f"{v:.2f} [{lohi[0]:.2f}, {lohi[1]:.2f}]"


def text_after_table(after: dict):
    """A DataFrame: per organism, the text task's accuracy after each stage."""

    return pd.DataFrame({m: {f"after {k}": f"{v['all']:.1%}" if isinstance(v, dict) else v for k, v in a.items()}
                         for m, a in after.items() if a}).fillna("")


def probe_table(probes: dict, accuracy: dict, name: str):
    """A DataFrame: per question, the two tower probes' accuracy [CI] (:func:`tower_probes`) beside the organism's."""

    return pd.DataFrame({"pooled-feature probe": {q: _ci(probes["pooled"]["accuracy"][q], probes["pooled"]["ci"][q])
                                                  for q in QUESTION_TYPES},
                         "main-object-token probe": {q: _ci(probes["main_object_tokens"]["accuracy"][q],
                                                            probes["main_object_tokens"]["ci"][q]) for q in QUESTION_TYPES},
                         name: {q: f"{accuracy[q]:.1%}" for q in QUESTION_TYPES}})


def counterfactual_table(follows: dict):
    """A DataFrame: per organism and question, how often the answer follows the new and the old main object."""

    return pd.DataFrame({(m, q): {"scenes": r["n"],
                                  "follows the new main object": _ci(r["follows_main"], r["follows_main_ci"]),
                                  "follows the old one": _ci(r["follows_old"], r["follows_old_ci"])}
                         for m, d in follows.items() for q, r in d.items()}).T


def text_attribution_table(text: dict):
    """A DataFrame: per organism, layer 0's share of the text-retrieval attribution [CI], the median
    held-out r and the examples (correctly answered)."""

    return pd.DataFrame({m: {"layer 0 share [95% CI]": _ci(s["all"]["layer0_share"], s["all"]["layer0_ci"], pct=False),
                             "median held-out r": f"{s['all']['median_heldout_r']:.2f}",
                             "examples (correct)": f"{s['all']['n_examples']} ({s['all']['n_correct']})"}
                         for m, s in text.items()})


def by_items_table(by_items: dict):
    """A DataFrame: per item count, the bound task's accuracy [95% Wilson CI] beside the type-guess level 1/k."""
    rows = {}
    for k, r in by_items.items():
        lo, hi = evaluate.wilson_interval(int(round(r["accuracy"] * r["n"])), r["n"])
        rows[f"k = {k}"] = {"accuracy [95% CI]": _ci(r["accuracy"], (lo, hi)), "type guess (1/k)": f"{r['type_guess']:.1%}",
                            "clears the type guess": lo > r["type_guess"]}
    return pd.DataFrame(rows).T
