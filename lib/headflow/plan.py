"""``python -m headflow.plan``: the paper-scale plan, priced without weights (:mod:`headflow.scale.plan`)."""
from headflow.scale.plan import main

if __name__ == "__main__":
    main()
