"""Models: loading (organisms, local folders, hub ids), the family adapter table (what differs
between LVLM families), the small LLaVA builder, and tiny random-weight models of each family."""
