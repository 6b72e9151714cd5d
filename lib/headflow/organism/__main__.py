"""``python -m headflow.organism``: train an organism (:mod:`headflow.organism.training`)."""
import os

from headflow.organism.training import main

if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
