"""``python -m headflow.evalset``: writes the FashionScenes evaluation set (:mod:`headflow.organism.evalset`)."""
from headflow.organism.evalset import main

if __name__ == "__main__":
    main()
