"""headflow: head-level analysis of image-to-text information flow in LVLMs.

The package is a stack of layers; a module imports only from its own layer or the layers below
it, at module level (``tests/test_layout.py`` checks this).  Bottom to top, in the order data
flows (image -> tokens -> intervention -> attribution -> finding -> page):

==============  ==================================================================================
``util``        the repository root, file hashes, moving data to a device and back
``store``       the resumable run store and the fingerprints that key it
``images``      image sets: COCO instances files, FashionScenes scenes and their answer words
``task``        the questions, the chat prompt, answer token ids
``models``      loading, the family adapter table, the small LLaVA builder, tiny models per family
``mechanism``   token groups, the one registered attention function (ablation, knockout, capture),
                the prefix-reusing fast path, clean evaluation
``method``      masks and regression, baseline rankings, metrics, cross-fitting, cost, the
                per-image experiment, the study set-up, shared statistics
``findings``    one module per chapter's finding, and the verdict rules
``organism``    training the model organism, its evaluation set
``book``        the notebook runner, index, figures, outputs, site fixes, compatibility table
``scale``       head attribution on Ray, the paper-scale plan and its pass counts, the benchmark, the GPU rehearsal
==============  ==================================================================================

The public calls are re-exported here, so ``import headflow`` is all a user needs
(:func:`headflow.rank_heads`, :class:`headflow.HeadRanking`); no module of the package imports
this one.

Where a head is ablated: :func:`headflow.mechanism.interventions._ablate_heads`.  The modules at
the top (``headflow.run``, ``attribute``, ``plan``, ``bench``, ``site``, ``evalset``, ``tiny``)
are entry points for ``python -m headflow.<name>`` that delegate to their layer.
"""
__version__ = "0.1.0"

# Bottom to top; imports flow downward only.
LAYERS = ("util", "store", "images", "task", "models", "mechanism", "method", "findings", "organism", "book", "scale")
# python -m headflow.<name>: thin modules above every layer
ENTRY_POINTS = ("run", "rank", "attribute", "plan", "bench", "site", "evalset", "tiny")

from headflow.images.fashionscenes import CLASSES  # noqa: E402  the organism's object labels
from headflow.method.heads import (  # noqa: E402  the one call (README) and its siblings
    HeadRanking, ablate_heads, faithfulness_curves, knockout, rank_heads)
from headflow.scale.plan import price_rank_heads  # noqa: E402  a dry run on a large model

__all__ = ["rank_heads", "HeadRanking", "faithfulness_curves", "ablate_heads", "knockout", "price_rank_heads",
           "CLASSES"]
