"""The book's figures, one module per chapter (or appendix); each function returns a matplotlib
figure.  ``from headflow.book import figures`` gives them all by name: ``figures.head_map(...)``
is :func:`headflow.book.figures.style.head_map`."""
from headflow.book.figures.appendix import masks_needed, performance_bars, planted_precision
from headflow.book.figures.attribution import (
    class_head_maps,
    fit_quality,
    fit_scatter,
    redundancy_curve,
    redundancy_maps,
    single_vs_all,
)
from headflow.book.figures.faithfulness import heldout_curves
from headflow.book.figures.flow import group_effects_bars, knockout_accuracy, knockout_curves, share_vs_area, token_maps
from headflow.book.figures.layers import (
    class_layer_shares,
    depth_by_organism,
    layer_shares,
    probe_curves,
    proxies_vs_attribution,
    top_layers_by_cutoff,
)
from headflow.book.figures.organism import (
    accuracy_bars,
    accuracy_comparison,
    confusion,
    scene_grid,
    text_retrieval_layers,
    training_curves,
)
from headflow.book.figures.semantics import permutation_null, probes_and_embedding, similarity_distributions, transfer_bars
from headflow.book.figures.sensitivity import interaction_plots, sensitivity_overlaps
from headflow.book.figures.style import head_map, metric_curves
from headflow.book.figures.tokens import logit_hist, patch_overlay, token_strip

__all__ = [
    "head_map", "metric_curves", "accuracy_bars", "accuracy_comparison", "confusion", "scene_grid",
    "text_retrieval_layers", "training_curves", "logit_hist", "patch_overlay", "token_strip", "class_head_maps",
    "fit_quality",
    "fit_scatter", "redundancy_curve", "redundancy_maps", "single_vs_all", "heldout_curves",
    "class_layer_shares", "depth_by_organism", "layer_shares", "probe_curves", "proxies_vs_attribution",
    "top_layers_by_cutoff",
    "permutation_null", "probes_and_embedding", "similarity_distributions", "transfer_bars",
    "group_effects_bars", "knockout_accuracy", "knockout_curves", "share_vs_area", "token_maps",
    "interaction_plots", "sensitivity_overlaps", "performance_bars", "planted_precision", "masks_needed",
]
