"""``python -m headflow.rank``: :func:`headflow.rank_heads` from the command line
(:func:`headflow.method.heads.main`)."""
from headflow.method.heads import main

if __name__ == "__main__":
    main()
