"""Image sets: COCO-format instances files (read, write, the main object) and FashionScenes, the
scenes the organism sees (rendering, variants, answer words)."""
