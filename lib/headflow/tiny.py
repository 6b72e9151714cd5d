"""``python -m headflow.tiny``: saves a tiny random-weight model of one family (:mod:`headflow.models.tiny`)."""
from headflow.models.tiny import main

if __name__ == "__main__":
    main()
