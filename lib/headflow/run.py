"""``python -m headflow.run``: the notebook runner (:mod:`headflow.book.runner`)."""
from headflow.book.runner import main

if __name__ == "__main__":
    main()
