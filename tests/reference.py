"""A slow, obvious reference for the interventions: attention recomputed by hand, in float64,
one query at a time, with every rule written out.  Registered as its own attention function."""
import math

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

SPEC = {}


def reference_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """query (B, H, Q, D), key/value (B, Hkv, K, D) -> (B, Q, H, D)."""
    layer = module.layer_idx
    B, H, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    G = H // Hkv
    scaling = scaling if scaling is not None else 1 / math.sqrt(D)
    pad = SPEC.get("attend", torch.ones(B, K, dtype=torch.bool))  # (B, K) False at padding
    image = SPEC.get("image")  # (B, K) bool
    keep = SPEC.get("keep")  # (B, n_layers, H) bool or None
    scope = SPEC.get("scope", "text")
    base_kind = SPEC.get("baseline", "zero")
    base_k, base_v = SPEC.get("base_k"), SPEC.get("base_v")  # per layer (Hkv, n_img, D)
    knockouts = SPEC.get("knockouts", [])  # (qmask (B,K), kmask (B,K), layers, heads or None)
    slots = SPEC.get("slots")  # (B, n_img) bool: which image positions an ablated head sees replaced
    out = torch.zeros(B, Q, H, D, dtype=torch.float64)
    for b in range(B):
        img_slots = image[b].nonzero().flatten() if image is not None else torch.empty(0, dtype=torch.long)
        last_img = int(img_slots.max()) if len(img_slots) else -1
        for h in range(H):
            kv = h // G
            clean_k, clean_v = key[b, kv].double(), value[b, kv].double()  # (K, D)
            abl_k, abl_v = clean_k.clone(), clean_v.clone()  # the keys an ablated head's text queries see
            if keep is not None and not bool(keep[b, layer, h]):
                if base_kind == "zero":
                    new_k, new_v = torch.zeros_like(clean_k[img_slots]), torch.zeros_like(clean_v[img_slots])
                elif base_kind == "image-mean":
                    new_k = clean_k[img_slots].mean(0).expand(len(img_slots), -1)
                    new_v = clean_v[img_slots].mean(0).expand(len(img_slots), -1)
                else:
                    new_k, new_v = base_k[layer][kv].double(), base_v[layer][kv].double()
                for i, p in enumerate(img_slots.tolist()):  # one image position at a time
                    if slots is None or bool(slots[b, i]):
                        abl_k[p], abl_v[p] = new_k[i], new_v[i]
            for i in range(Q):
                qpos = K - Q + i
                sees_ablated = scope == "all" or qpos > last_img
                k, v = (abl_k, abl_v) if sees_ablated else (clean_k, clean_v)
                if attention_mask is not None and attention_mask.dtype == torch.bool:
                    allowed = attention_mask[b, 0, i].clone()  # the model's own mask (causal, padding, sliding
                    # window, Gemma 3's bidirectional image attention)
                else:
                    allowed = pad[b].clone()
                    allowed[qpos + 1:] = False  # causal
                for qm, km, layers, heads in knockouts:
                    in_heads = heads is None or (bool(heads[b, h]) if torch.is_tensor(heads) else h in heads)
                    if layer in layers and in_heads and qm[b, qpos]:
                        allowed &= ~km[b]
                if not allowed.any():
                    continue  # a padding query: nothing to attend to
                scores = (k @ query[b, h, i].double()) * scaling
                p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), 0)
                out[b, i, h] = p @ v
    return out.to(query.dtype), None


def _mask(*args, **kwargs):
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register("reference", reference_attention)
AttentionMaskInterface.register("reference", _mask)


def run_reference(model, inputs, **spec):
    """Logits of the model with the reference attention and ``spec`` (keys as in SPEC)."""
    SPEC.clear()
    SPEC.update(spec)
    SPEC.setdefault("attend", inputs["attention_mask"].bool())
    before = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation({"text_config": "reference"})
    try:
        with torch.inference_mode():
            return model(**inputs).logits
    finally:
        model.set_attn_implementation({"text_config": before})
        SPEC.clear()
