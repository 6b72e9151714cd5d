"""The one intervention mechanism: token groups, head ablation / knockout / capture inside one
registered attention function, the prefix-reusing fast path, and clean evaluation.  Where a
head is ablated: :func:`headflow.mechanism.interventions._ablate_heads`."""
