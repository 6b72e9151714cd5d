"""Scale-out: head attribution on Ray, the paper-scale plan, the performance benchmark."""
