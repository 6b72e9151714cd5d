"""Many head-ablation masks on one image, with the image prefix computed once.

With scope ``text``, a head ablation changes nothing before the end of the image: every
position up to the last image token computes exactly what the clean model computes.  So the
prefix (system tokens and image) runs once per image, its keys and values are kept, and each
mask reruns only the text after the image, as one row of a batch, with only the final
position's logits computed.  The suffix pass goes through the same registered attention
function (:mod:`headflow.mechanism.interventions`); its prefix branch,
:func:`headflow.mechanism.prefix_attention.prefix_attention`, merges
a softmax over the kept prefix keys (clean or ablated per row and head) with the causal softmax
over the suffix, exactly (flash-decoding style).

    reuse = PrefixReuse(model, inputs, baseline)       # one prefix pass
    logits = reuse.final_logits(keep)                   # keep: (M, n_layers, n_heads) bool
    y = reuse.final_logits(keep, reduce=lambda lg: lg[:, answer_id])   # (M,): no (M, vocab) kept

Memory: ``reduce`` is applied to each batch's ``(B, vocab)`` logits on the model's device, so a
call keeps ``M`` reduced rows, not ``M x vocab`` floats (chapter 4's 27,290 masks per image over
LLaVA-1.5's 32,064 words are 3.5 GB in float32); results come back to the CPU per batch.
"""
from __future__ import annotations

from typing import Sequence

import torch

from headflow.util.devices import to_device
from headflow.mechanism import interventions as iv
from headflow.mechanism.prefix_attention import PrefixState
from headflow.models import families


def position_ids(model, inputs) -> torch.Tensor:
    """Position ids of the full prompt: ``(1, L)``, or ``(3, 1, L)`` for M-RoPE models."""
    ids = inputs["input_ids"]
    inner = getattr(model, "model", model)
    if hasattr(inner, "get_rope_index"):
        kw = {k: inputs[k] for k in ("image_grid_thw", "mm_token_type_ids", "attention_mask") if k in inputs}
        pos, _ = inner.get_rope_index(ids, **kw)
        return pos
    return torch.arange(ids.shape[1], device=ids.device)[None]


def _rows_of(ko: iv.Knockout, start: int, n: int, device) -> iv.Knockout:
    """Rows ``start:start + n`` of a per-row knockout (a shared one as it is), on ``device``."""
    pick = lambda m: m.to(device) if m is None or m.dim() == 1 else m[start:start + n].to(device)  # noqa: E731
    return iv.Knockout(pick(ko.queries), pick(ko.keys), ko.layers, ko.heads,
                       None if ko.head_mask is None else ko.head_mask[start:start + n].to(device))


class PrefixReuse:
    """One image and prompt (batch of 1, unpadded); many ablation masks of its heads."""

    def __init__(self, model, inputs, baseline: iv.Baseline, base: str | None = None):
        iv.install(model, base)
        self.model = model
        inputs = to_device(inputs, model.device)
        self.n_layers, self.n_heads = iv.text_layers_and_heads(model)
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError("PrefixReuse takes one prompt (batch of 1); build one per image")
        problem = families.prefix_reuse_problem(model, ids.shape[1])
        if problem:
            raise ValueError(f"the prefix-reusing fast path is not valid here: {problem}; use batched full forwards "
                             "(headflow.method.experiment.masks_y falls back to them by itself)")
        img = iv.image_mask(model, ids)[0]
        if not img.any():
            raise ValueError("the prompt has no image tokens")
        self.P = int(img.nonzero().max()) + 1  # the prefix ends with the last image token
        if self.P >= ids.shape[1]:
            raise ValueError("the prompt has no text after the image")
        self.suffix_ids = ids[:, self.P:]
        pos = position_ids(model, inputs)
        self.suffix_pos = pos[..., self.P:]
        # the prefix pass: capture the keys/values of every prefix slot in every layer
        per_position = families.forward_inputs(model, inputs, self.P)  # e.g. Gemma 3's token_type_ids
        prefix_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *per_position)}
        prefix_inputs.update(per_position, input_ids=ids[:, :self.P])
        everything = torch.ones(1, self.P, dtype=torch.bool, device=ids.device)
        cap = iv.Capture(image=everything, kv=True)
        with torch.inference_mode(), iv.intervene(model, capture=cap):
            model(**prefix_inputs, position_ids=pos[..., :self.P], logits_to_keep=1, use_cache=False)
        img_slots = img[:self.P]
        keys, values, keys_abl, values_abl = [], [], [], []
        for l in range(self.n_layers):
            k, v = cap.keys[l], cap.values[l]  # (1, H_kv, P, D)
            bk, bv = baseline.image_kv(l, k, v, img_slots[None])
            keys.append(k[0].contiguous())
            values.append(v[0].contiguous())
            keys_abl.append(iv._scatter_slots(k, img_slots[None], bk)[0].contiguous())
            values_abl.append(iv._scatter_slots(v, img_slots[None], bv)[0].contiguous())
        self.state = PrefixState(keys, values, keys_abl, values_abl)
        self.image_slots = img_slots  # (P,) bool
        self.n_image = int(img_slots.sum())

    def knockouts_fit(self, knockouts: Sequence[iv.Knockout], n_rows: int) -> str | None:
        """Why ``knockouts`` cannot run on this prefix (``None`` if they can): their masks must cover the
        prompt's ``P + S`` positions, per-row masks ``n_rows`` rows, and no knocked-out query may lie in
        the prefix (it would change the prefix, which is computed once)."""
        L = self.P + self.suffix_ids.shape[1]
        for ko in knockouts:
            for what in ("queries", "keys"):
                m = getattr(ko, what)
                if m.shape[-1] != L:
                    return (f"knockout {what} cover {m.shape[-1]} positions but this prompt has {L}: build the masks "
                            "for this prompt (headflow.mechanism.tokens.resolve on its input_ids)")
                if m.dim() == 2 and m.shape[0] != n_rows:
                    return f"knockout {what} have {m.shape[0]} rows for {n_rows} masks"
            if bool(ko.queries[..., :self.P].any()):
                return (f"a knockout's queries start before position {self.P} (the end of the image): the prefix "
                        "would change, so these rows need full forwards")
        return None

    @torch.inference_mode()
    def final_logits(self, keep: torch.Tensor, batch_size: int = 64, slots: torch.Tensor | None = None,
                     reduce=None, knockouts: Sequence[iv.Knockout] = ()) -> torch.Tensor:
        """Final-position logits ``(M, vocab)`` under each mask of ``keep (M, n_layers, n_heads)``, or
        with ``reduce`` (a function of one batch's ``(B, vocab)`` logits, e.g. the answer's column or
        a logit difference) its ``(M, ...)`` values: only those are kept.  Returned on the CPU in
        float32.  With ``slots (M, n_image)`` bool only those image positions are replaced in the
        ablated heads (position-level ablation, as
        :class:`headflow.mechanism.interventions.HeadAblation` ``slots``).  ``knockouts``
        (:class:`headflow.mechanism.interventions.Knockout`, masks over the whole prompt, per row ``(M, L)``
        or shared ``(L,)``) act in the suffix pass too: every knocked-out query must lie after the prefix
        (:meth:`knockouts_fit`), since the prefix was computed without them."""
        keep = torch.as_tensor(keep, dtype=torch.bool, device="cpu")
        problem = self.knockouts_fit(knockouts, keep.shape[0])
        if problem:
            raise ValueError(problem)
        if keep.dim() != 3 or tuple(keep.shape[1:]) != (self.n_layers, self.n_heads):
            raise ValueError(f"masks have shape {tuple(keep.shape)}; this model needs "
                             f"(n_masks, {self.n_layers}, {self.n_heads})")
        prefix_slots = None
        if slots is not None:
            slots = torch.as_tensor(slots, dtype=torch.bool, device="cpu")
            if tuple(slots.shape) != (keep.shape[0], self.n_image):
                raise ValueError(f"slots have shape {tuple(slots.shape)}; these masks need ({keep.shape[0]}, "
                                 f"{self.n_image}): one bool per image position")
            prefix_slots = torch.zeros(keep.shape[0], self.P, dtype=torch.bool, device="cpu")
            prefix_slots[:, self.image_slots] = slots
        out = []
        for s in range(0, keep.shape[0], batch_size):
            chunk = keep[s:s + batch_size]
            B = chunk.shape[0]
            self.state.keep = chunk.to(self.suffix_ids.device)
            self.state.slots = None if prefix_slots is None else prefix_slots[s:s + batch_size].to(self.suffix_ids.device)
            part = [_rows_of(ko, s, B, self.suffix_ids.device) for ko in knockouts]
            part = [ko for ko in part if ko.queries.any()]
            ctx = iv._Context(self.n_layers, self.n_heads, None, part, None, prefix=self.state)
            pos = self.suffix_pos.expand(*self.suffix_pos.shape[:-2], B, -1)
            with iv._activate(ctx):
                logits = self.model(input_ids=self.suffix_ids.expand(B, -1), position_ids=pos, use_cache=False,
                                    logits_to_keep=1).logits[:, -1]
            # a copy: a view of the batch's logits (the answer's column) would keep the whole batch alive
            out.append((logits if reduce is None else reduce(logits)).to(device="cpu", dtype=torch.float32, copy=True))
            del logits  # before the next batch's are computed
        self.state.keep = self.state.slots = None
        return torch.cat(out)
