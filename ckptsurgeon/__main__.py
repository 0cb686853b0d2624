"""``python -m ckptsurgeon``."""

from ckptsurgeon.cli import main

if __name__ == "__main__":
    main()
