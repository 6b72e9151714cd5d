"""One intervention mechanism: a registered attention function.

Every intervention acts inside the language model's attention through one function registered
with transformers' ``AttentionInterface`` (plus the matching ``AttentionMaskInterface`` entry),
so it works on top of ``eager`` and ``sdpa`` alike and the interventions compose:

- :class:`HeadAblation` -- for chosen (layer, query head) pairs, the image keys and values seen
  by text queries after the image are replaced by a baseline (per query head, after keys and
  values are expanded to query heads, so grouped-query models are handled);
- :class:`Knockout` -- attention from a query group to a key group is set to zero probability
  (pre-softmax -inf) in chosen layers, optionally chosen heads;
- :class:`Capture` -- the attention mass from chosen queries to the image, per head, and the
  image keys/values (for the ``dataset-mean`` baseline), without switching the model to eager.
  Combined with a head ablation, the mass is what the ablated heads' queries read (the baseline
  keys/values); the captured ``keys``/``values`` stay those the image positions produce.

Use them through one context manager::

    with intervene(model, ablation=HeadAblation(keep, image_mask, baseline)):
        logits = model(**inputs).logits

Where a head is ablated: :func:`_ablate_heads`.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask, sdpa_mask

from headflow.util.devices import to_device
from headflow.mechanism.prefix_attention import expand_heads, prefix_attention
from headflow.models.families import image_span

BASELINES = ("dataset-mean", "image-mean", "zero")
SCOPES = ("text", "all")
BASES = ("sdpa", "eager")


# ------------------------------------------------------------------------------------ specs
@dataclass
class Baseline:
    """Baseline keys/values for the image positions: ``kind`` in BASELINES.

    For ``dataset-mean``, ``keys[l]`` and ``values[l]`` are ``(n_kv_heads, n_image, head_dim)``:
    the mean over a reference set of images of the post-RoPE keys/values at each image position.
    """

    kind: str = "dataset-mean"
    keys: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None

    def __post_init__(self):
        if self.kind not in BASELINES:
            raise ValueError(f"unknown baseline {self.kind!r}; choose one of {BASELINES}")
        if self.kind == "dataset-mean" and (self.keys is None or self.values is None):
            raise ValueError("a dataset-mean baseline needs keys and values: build it with "
                             "headflow.mechanism.interventions.dataset_mean_baseline(model, inputs_list)")

    def image_kv(self, layer: int, key: torch.Tensor, value: torch.Tensor, image_mask: torch.Tensor):
        """Baseline ``(B, H_kv, n_image, D)`` keys and values for one layer.

        ``key``/``value``: ``(B, H_kv, K, D)`` as the attention function sees them;
        ``image_mask``: ``(B, K)`` bool, the same number of image slots in every row.
        """
        B, Hkv, _, D = key.shape
        n_img = int(image_mask[0].sum())
        if self.kind == "zero":
            z = key.new_zeros(B, Hkv, n_img, D)
            return z, z.clone()
        if self.kind == "image-mean":
            k_img = _gather_slots(key, image_mask)
            v_img = _gather_slots(value, image_mask)
            return (k_img.mean(2, keepdim=True).expand(-1, -1, n_img, -1),
                    v_img.mean(2, keepdim=True).expand(-1, -1, n_img, -1))
        bk, bv = self.keys[layer], self.values[layer]
        if bk.dim() == 4:  # already per row (and possibly per query head), e.g. for gradients
            return bk, bv
        if bk.shape[1] != n_img:
            raise ValueError(f"the dataset-mean baseline has {bk.shape[1]} image positions but this prompt has "
                             f"{n_img}; rebuild the baseline with images processed like these")
        return (bk.to(key.dtype)[None].expand(B, -1, -1, -1), bv.to(value.dtype)[None].expand(B, -1, -1, -1))


@dataclass
class HeadAblation:
    """Ablate heads: ``keep`` is ``(B, n_layers, n_heads)`` bool (False = ablated), or
    ``(n_layers, n_heads)`` for every row; ``image_mask`` is ``(B, L)`` bool over positions.

    Position-level ablation: ``slots`` ``(B, n_image)`` bool (or ``(n_image,)`` for every row)
    selects which image positions, in order, an ablated head sees replaced; the others keep
    their clean keys/values.  ``None`` (default) replaces every image position."""

    keep: torch.Tensor
    image_mask: torch.Tensor
    baseline: Baseline = field(default_factory=lambda: Baseline("zero"))
    scope: str = "text"
    slots: torch.Tensor | None = None

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"unknown ablation scope {self.scope!r}; choose one of {SCOPES}")
        if isinstance(self.baseline, str):
            self.baseline = Baseline(self.baseline)
        if self.keep.dtype != torch.bool:
            if self.keep.is_floating_point():
                raise ValueError(f"keep must be a bool mask (True = head kept), got {self.keep.dtype}: convert 0/1 "
                                 "masks with `keep > 0.5`; a float mask is never read as probabilities")
            self.keep = self.keep.bool()
        if self.keep.dim() == 2:
            self.keep = self.keep[None].expand(self.image_mask.shape[0], -1, -1)
        counts = self.image_mask.sum(1)
        if self.image_mask.dim() != 2 or counts.min() == 0 or (counts != counts[0]).any():
            raise ValueError("image_mask must be (B, L) bool with the same, non-zero number of image tokens per row")
        if self.slots is not None:
            self.slots = torch.as_tensor(self.slots, dtype=torch.bool)
            if self.slots.dim() == 1:
                self.slots = self.slots[None].expand(self.image_mask.shape[0], -1)
            if tuple(self.slots.shape) != (self.image_mask.shape[0], int(counts[0])):
                raise ValueError(f"slots have shape {tuple(self.slots.shape)}; this batch needs "
                                 f"({self.image_mask.shape[0]}, {int(counts[0])}): one bool per image position")

    @property
    def empty(self) -> bool:
        """True if nothing is ablated (every head kept, or no image position selected)."""
        return bool(self.keep.all()) or (self.slots is not None and not bool(self.slots.any()))


@dataclass
class Knockout:
    """Block attention from ``queries`` to ``keys`` (each ``(B, L)`` bool, or ``(L,)`` for all rows)
    in ``layers``; in ``heads`` only, if given, or per row in the heads where ``head_mask``
    (``(B, n_heads)`` bool) is True (so one batch can knock out different head sets per row)."""

    queries: torch.Tensor
    keys: torch.Tensor
    layers: Sequence[int]
    heads: Sequence[int] | None = None
    head_mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.heads is not None and self.head_mask is not None:
            raise ValueError("give a knockout either heads (the same for every row) or head_mask (per row), not both")


@dataclass
class Capture:
    """Record, per layer, the attention mass from ``queries`` to ``image`` (each ``(B, L)`` bool):
    ``mass[l]`` is ``(B, n_heads, n_queries)``; ``value_mass[l]`` (same shape) weighs each image
    key's attention by the norm of the value it reads, ``sum_k p_k ||v_k||`` (what a head can move
    from the image, which no per-head rescaling of the weights reproduces); with ``kv=True`` also the
    image keys/values ``keys[l]``/``values[l]``, ``(B, n_kv_heads, n_image, head_dim)``."""

    queries: torch.Tensor | None = None
    image: torch.Tensor | None = None
    kv: bool = False
    mass: dict = field(default_factory=dict)
    value_mass: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)


@dataclass
class _Context:
    n_layers: int
    n_heads: int
    ablation: HeadAblation | None
    knockouts: list[Knockout]
    capture: Capture | None
    prefix: object = None  # a prefix_attention.PrefixState during a suffix pass

    @property
    def needs_mask(self) -> bool:
        """Whether any intervention acts (an empty one leaves the stock computation untouched)."""
        ablating = self.ablation is not None and not self.ablation.empty
        return ablating or bool(self.knockouts) or self.capture is not None


_ACTIVE: _Context | None = None


# ------------------------------------------------------------------------------------ helpers
def _gather_slots(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``x (B, H, K, D)`` at the ``slots (B, K)`` bool positions -> ``(B, H, n, D)`` (same n per row)."""
    B, H, _, D = x.shape
    idx = slots.nonzero()[:, 1].view(B, -1)
    return x.gather(2, idx[:, None, :, None].expand(B, H, -1, D))


def _scatter_slots(x: torch.Tensor, slots: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """A copy of ``x (B, H, K, D)`` with ``src (B, H, n, D)`` written at the ``slots``."""
    B, H, _, D = x.shape
    idx = slots.nonzero()[:, 1].view(B, -1)
    return x.scatter(2, idx[:, None, :, None].expand(B, H, -1, D), src)


def _rows(mask: torch.Tensor, batch: int) -> torch.Tensor:
    return mask[None].expand(batch, -1) if mask.dim() == 1 else mask


class _OneGroup:
    """A view of an attention module whose keys/values are already expanded to query heads."""

    def __init__(self, module):
        self._inner = module
        self.num_key_value_groups = 1

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _base_attention(module):
    """The stock attention function the intervention runs on (sdpa, or the family's own eager)."""
    impl = module.config._attn_implementation
    if impl == "headflow_sdpa":
        return sdpa_attention_forward
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"{type(module).__name__} has no eager_attention_forward in its module; "
                         "use the sdpa base instead")
    return eager


def _is_sdpa(module) -> bool:
    return module.config._attn_implementation == "headflow_sdpa"


# ------------------------------------------------------------------------------------ the function
def _knockout_block(ctx: _Context, layer: int, B: int, Hq: int, q_len: int, k_len: int, device):
    """``(B, Hq, q_len, k_len)`` bool: the query-key pairs this layer's knockouts block (queries are the
    last ``q_len`` of the ``k_len`` positions, as in a suffix pass); ``None`` if no knockout acts here."""
    block = None
    q_off = k_len - q_len
    for ko in ctx.knockouts:
        if layer not in ko.layers:
            continue
        for what in ("queries", "keys"):
            if getattr(ko, what).shape[-1] < k_len:
                raise ValueError(f"knockout {what} cover {getattr(ko, what).shape[-1]} positions but this prompt has "
                                 f"{k_len}: build the masks for this prompt (headflow.mechanism.tokens.resolve on its "
                                 "input_ids), one bool per position")
        qm = _rows(ko.queries, B)[:, q_off:q_off + q_len].to(device)
        km = _rows(ko.keys, B)[:, :k_len].to(device)
        b = (qm[:, :, None] & km[:, None, :])[:, None]  # (B, 1, Q, K)
        if ko.heads is not None:
            hm = torch.zeros(Hq, dtype=torch.bool, device=device)
            hm[list(ko.heads)] = True
            b = b & hm[None, :, None, None]
        elif ko.head_mask is not None:
            b = b & _rows(ko.head_mask, B).to(device)[:, :, None, None]
        block = b if block is None else block | b
    return block if block is None else block.expand(B, Hq, q_len, k_len)


def _knockout_mask(ctx: _Context, layer: int, mask, B: int, Hq: int, q_len: int, k_len: int, sdpa: bool):
    """The attention mask of this layer with every knockout applied (``mask`` itself if none applies)."""
    block = _knockout_block(ctx, layer, B, Hq, q_len, k_len, mask.device)
    if block is None:
        return mask
    if sdpa:
        new = mask & ~block
        if (mask.any(-1) & ~new.any(-1)).any():
            raise ValueError("a knockout blocks every key of some query (its whole row would be -inf); "
                             "keep at least the query's own position or the tokens before the image")
        return new
    return mask.masked_fill(block, torch.finfo(mask.dtype).min)


def _ablated_kv(abl: HeadAblation, layer: int, key, value, Hq: int):
    """Keys and values ``(B, Hq, K, D)``, expanded to query heads, with the image slots of the
    heads ablated in ``layer`` replaced by the baseline (what those heads' text queries read)."""
    k_len = key.shape[2]
    keep = abl.keep[:, layer].to(key.device)  # (B, Hq)
    img = abl.image_mask[:, :k_len].to(key.device)  # (B, K)
    groups = Hq // key.shape[1]
    base_k, base_v = abl.baseline.image_kv(layer, key, value, img)
    k_rep, v_rep = expand_heads(key, groups), expand_heads(value, groups)
    drop = ~keep[:, :, None, None]  # (B, Hq, 1, 1)
    if abl.slots is not None:  # position-level: only the chosen image positions
        drop = drop & abl.slots.to(key.device)[:, None, :, None]  # (B, Hq, n_image, 1)
    if base_k.shape[1] != Hq:  # per kv head: query head h reads kv head h // groups
        base_k, base_v = expand_heads(base_k, groups), expand_heads(base_v, groups)
    k_abl = _scatter_slots(k_rep, img, torch.where(drop, base_k, _gather_slots(k_rep, img)))
    v_abl = _scatter_slots(v_rep, img, torch.where(drop, base_v, _gather_slots(v_rep, img)))
    return k_abl, v_abl


def _ablate_heads(module, query, key, value, mask, out, abl: HeadAblation, layer: int, base, kwargs):
    """Where a head is ablated: recompute attention for the query rows after the image with the
    image keys/values of the ablated heads replaced by the baseline, and take those rows' outputs
    for the ablated heads only.  ``out`` is ``(B, Q, H, D)``; returns the new ``out``."""
    B, Hq, q_len, _ = query.shape
    k_len = key.shape[2]
    q_off = k_len - q_len
    keep = abl.keep[:, layer].to(query.device)  # (B, Hq)
    img = abl.image_mask[:, :k_len].to(query.device)  # (B, K)
    # which query slots see the ablated keys
    last_img = img.float().cumsum(1).argmax(1)  # (B,) last image slot
    slots = torch.arange(q_off, k_len, device=query.device)
    after = slots[None] > last_img[:, None] if abl.scope == "text" else torch.ones(B, q_len, dtype=torch.bool,
                                                                                    device=query.device)
    if not after.any():
        return out
    q_start = int(after.float().argmax(1).min()) if abl.scope == "text" else 0
    k_abl, v_abl = _ablated_kv(abl, layer, key, value, Hq)
    m = mask[:, :, q_start:] if mask is not None else None
    out_abl, _ = base(_OneGroup(module), query[:, :, q_start:], k_abl, v_abl, m, **kwargs)
    use = after[:, q_start:, None, None] & ~keep[:, None, :, None]  # (B, Q', Hq, 1)
    out = out.clone()
    out[:, q_start:] = torch.where(use, out_abl, out[:, q_start:])
    return out


def _check_capture_after_image(cap: Capture, abl: HeadAblation, k_len: int):
    """Under a text-scope ablation only queries after the image read the baseline; a capture that
    combines with it must therefore watch those queries only."""
    if cap.queries is None or abl.scope == "all":
        return
    img = abl.image_mask[:, :k_len]
    last_img = img.float().cumsum(1).argmax(1)
    q = _rows(cap.queries, img.shape[0])[:, :k_len]
    before = q & (torch.arange(k_len, device=q.device)[None] <= last_img[:, None])
    if before.any():
        raise ValueError("a capture combined with a text-scope head ablation must watch queries after the image "
                         "only (e.g. the final token); use scope='all' to capture earlier queries")


def _capture(cap: Capture, layer: int, query, key, value, mask, scaling, sdpa: bool):
    B, Hq, q_len, D = query.shape
    k_len = key.shape[2]
    q_off = k_len - q_len
    groups = Hq // key.shape[1]
    if cap.queries is None:
        return
    qm = _rows(cap.queries, B)[:, q_off:q_off + q_len].to(query.device)
    im = _rows(cap.image, B)[:, :k_len].to(query.device)
    idx = qm.nonzero()[:, 1].view(B, -1)  # same count per row
    q_sel = query.gather(2, idx[:, None, :, None].expand(B, Hq, -1, D))
    scores = q_sel @ expand_heads(key, groups).transpose(-1, -2) * scaling  # (B, Hq, n, K)
    if mask is not None:
        m = mask.gather(2, idx[:, None, :, None].expand(B, mask.shape[1], -1, k_len))
        scores = scores.masked_fill(~m, float("-inf")) if sdpa else scores + m
    probs = scores.float().softmax(-1)
    cap.mass[layer] = (probs * im[:, None, None, :]).sum(-1)
    vnorm = expand_heads(value, groups).float().norm(dim=-1)  # (B, Hq, K)
    cap.value_mass[layer] = (probs * (im[:, None, :] * vnorm)[:, :, None, :]).sum(-1)


def headflow_attention(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: stock attention plus the active interventions.

    ``query``: ``(B, H, Q, D)``; ``key``/``value``: ``(B, H_kv, K, D)`` (post-RoPE).
    Returns ``(B, Q, H, D)`` and the attention weights if the base returns them.
    """
    base = _base_attention(module)
    ctx = _ACTIVE
    if ctx is not None and ctx.prefix is not None:  # a suffix pass of prefix_reuse (head ablations, knockouts)
        block = None
        if ctx.knockouts:
            S, P = query.shape[2], ctx.prefix.keys[module.layer_idx].shape[1]
            block = _knockout_block(ctx, module.layer_idx, query.shape[0], query.shape[1], S, P + S, query.device)
        return prefix_attention(module, query, key, value, ctx.prefix, kwargs.get("scaling", module.scaling),
                                block), None
    if ctx is None or not ctx.needs_mask:
        return base(module, query, key, value, attention_mask, **kwargs)
    layer = module.layer_idx
    B, Hq, q_len, _ = query.shape
    k_len = key.shape[2]
    sdpa = _is_sdpa(module)
    mask = attention_mask
    if ctx.knockouts:
        mask = _knockout_mask(ctx, layer, mask, B, Hq, q_len, k_len, sdpa)
    if ctx.capture is not None:
        if ctx.capture.kv:
            img = ctx.capture.image[:, :k_len].to(key.device)
            ctx.capture.keys[layer] = _gather_slots(key, img).detach()
            ctx.capture.values[layer] = _gather_slots(value, img).detach()
        k_seen, v_seen = key, value
        abl = ctx.ablation
        if abl is not None and not bool(abl.keep[:, layer].all()):
            _check_capture_after_image(ctx.capture, abl, k_len)
            k_seen, v_seen = _ablated_kv(abl, layer, key, value, Hq)
        _capture(ctx.capture, layer, query, k_seen, v_seen, mask, kwargs.get("scaling", module.scaling), sdpa)
    out, weights = base(module, query, key, value, mask, **kwargs)
    abl = ctx.ablation
    if abl is not None and not bool(abl.keep[:, layer].all()):
        out = _ablate_heads(module, query, key, value, mask, out, abl, layer, base, kwargs)
    return out, weights


def _sdpa_mask(*args, **kwargs):
    if _ACTIVE is not None and _ACTIVE.needs_mask:
        kwargs["allow_is_causal_skip"] = False  # the interventions need the mask materialised
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register("headflow_sdpa", headflow_attention)
AttentionInterface.register("headflow_eager", headflow_attention)
AttentionMaskInterface.register("headflow_sdpa", _sdpa_mask)
AttentionMaskInterface.register("headflow_eager", eager_mask)


# ------------------------------------------------------------------------------------ public API
def install(model, base: str | None = None):
    """Route the language model's attention through :func:`headflow_attention` (idempotent).

    ``base``: "sdpa" or "eager" (default: whatever the model uses now).  Without an active
    intervention the model computes exactly what the base computes.
    """
    text_cfg = model.config.get_text_config()
    current = text_cfg._attn_implementation
    if base is None:
        base = current.removeprefix("headflow_") if current else "sdpa"
    if base not in BASES:
        raise ValueError(f"unknown attention base {base!r}; choose one of {BASES}")
    if current != f"headflow_{base}":
        model.set_attn_implementation({"text_config": f"headflow_{base}"})
    return model


def text_layers_and_heads(model) -> tuple[int, int]:
    cfg = model.config.get_text_config()
    return cfg.num_hidden_layers, cfg.num_attention_heads


@contextlib.contextmanager
def intervene(model, ablation: HeadAblation | None = None, knockouts: Sequence[Knockout] = (),
              capture: Capture | None = None, base: str | None = None):
    """Run the model under the given interventions (they compose); validates them first."""
    install(model, base)
    n_layers, n_heads = text_layers_and_heads(model)
    if ablation is not None:
        if tuple(ablation.keep.shape[1:]) != (n_layers, n_heads):
            raise ValueError(f"ablation mask has shape {tuple(ablation.keep.shape)}; this model needs "
                             f"(batch, {n_layers}, {n_heads}) or ({n_layers}, {n_heads}) (layers x query heads)")
    for ko in knockouts:
        bad = [l for l in ko.layers if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"knockout layers {bad} out of range: the model has layers 0..{n_layers - 1}")
        if ko.heads is not None and [h for h in ko.heads if not 0 <= h < n_heads]:
            raise ValueError(f"knockout heads {list(ko.heads)} out of range: the model has heads 0..{n_heads - 1}")
        if ko.head_mask is not None and ko.head_mask.shape[-1] != n_heads:
            raise ValueError(f"knockout head_mask has shape {tuple(ko.head_mask.shape)}; this model needs "
                             f"(batch, {n_heads})")
        if not ko.queries.any() or not ko.keys.any():
            raise ValueError("a knockout's query or key group is empty for this prompt")
    with _activate(_Context(n_layers, n_heads, ablation, list(knockouts), capture)):
        yield


@contextlib.contextmanager
def _activate(ctx: _Context):
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("interventions do not nest; pass them all to one intervene() call")
    _ACTIVE = ctx
    try:
        yield
    finally:
        _ACTIVE = None


def keep_mask(model, ablate: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
    """``(n_layers, n_heads)`` bool, True everywhere except the listed (layer, head) pairs."""
    n_layers, n_heads = text_layers_and_heads(model)
    keep = torch.ones(n_layers, n_heads, dtype=torch.bool)
    for l, h in ablate:
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise ValueError(f"head ({l}, {h}) out of range: the model has {n_layers} layers x {n_heads} heads")
        keep[l, h] = False
    return keep


def image_mask(model, input_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the image span, every position that carries the image (the image tokens,
    separators inside their run, the family's boundary markers: :func:`headflow.models.families.image_span`)."""

    return image_span(model, input_ids)


@torch.inference_mode()
def dataset_mean_baseline(model, batches: Sequence[dict]) -> Baseline:
    """The ``dataset-mean`` baseline: per layer, kv head and image position, the mean over the
    reference images of the post-RoPE image keys/values.  ``batches``: processor outputs."""
    n_layers, _ = text_layers_and_heads(model)
    sums_k, sums_v, n = [None] * n_layers, [None] * n_layers, 0
    for inputs in batches:
        inputs = to_device(inputs, model.device)
        cap = Capture(image=image_mask(model, inputs["input_ids"]), kv=True)
        with intervene(model, capture=cap):
            model(**inputs, logits_to_keep=1)
        for l in range(n_layers):
            k, v = cap.keys[l].float().sum(0), cap.values[l].float().sum(0)
            if sums_k[l] is not None and k.shape != sums_k[l].shape:
                raise ValueError(f"the reference images give {k.shape[1]} image positions in one batch and "
                                 f"{sums_k[l].shape[1]} in another: a dataset-mean baseline needs every reference "
                                 "image processed to one size (resize them, or use baseline='image-mean')")
            sums_k[l] = k if sums_k[l] is None else sums_k[l] + k
            sums_v[l] = v if sums_v[l] is None else sums_v[l] + v
        n += inputs["input_ids"].shape[0]
    if n == 0:
        raise ValueError("the dataset-mean baseline needs at least one reference image")
    return Baseline("dataset-mean", keys=[k / n for k in sums_k], values=[v / n for v in sums_v])
