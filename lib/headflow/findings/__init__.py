"""One module per finding (chapter): redundancy (2), layers (5), semantics (6), flow (7), positions
(8), sensitivity (9), validation (appendix), and the verdict rules every chapter reads."""
