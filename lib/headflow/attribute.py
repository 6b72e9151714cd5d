"""``python -m headflow.attribute``: head attribution outside the notebooks, locally or on Ray
(:mod:`headflow.scale.attribute`)."""
from headflow.scale.attribute import main

if __name__ == "__main__":
    main()
