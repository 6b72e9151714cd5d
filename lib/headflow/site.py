"""``python -m headflow.site``: the built site's fixes (local MathJax) (:mod:`headflow.book.site`)."""
from headflow.book.site import main

if __name__ == "__main__":
    main()
