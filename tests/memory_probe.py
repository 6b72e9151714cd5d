"""Run in a subprocess by tests/test_plan.py: peak memory of chapter 4's attribution call on a
shadow model, against the plan's formula.  Prints one JSON line."""
import json
import resource
import sys

import torch

from headflow.images import coco, sets
from headflow.mechanism import interventions as iv
from headflow.method import attribution, experiment
from headflow.models import shadow

torch.manual_seed(0)
checkpoint, n_masks, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
set_file = sets.resolve("mechanics:coco80")
examples = coco.load_set(set_file, size=(640, 480))[:1]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731 - peak, bytes
imports = rss()
net, processor = shadow.build(checkpoint)  # built in memory (a saved one is memory-mapped: pages load when touched)
task = experiment.prepare(processor, examples, coco.class_names(set_file), "What is the main object in this image?")[0]
keep = attribution.sample_masks(n_masks, *iv.text_layers_and_heads(net), 0.5, 0)
loaded = rss()
experiment.masks_y(net, task, iv.Baseline("zero"), keep, "logit", batch)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"imports": imports, "loaded": loaded, "peak": peak, "tokens": int(task.inputs["input_ids"].shape[1]),
                  "params": sum(p.numel() for p in net.parameters())}))
