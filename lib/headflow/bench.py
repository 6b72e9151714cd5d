"""``python -m headflow.bench``: the performance comparison (:mod:`headflow.scale.bench`)."""
from headflow.scale.bench import main

if __name__ == "__main__":
    main()
