"""``python -m controller`` is the same as the ``canarist`` command."""

from controller.cli.main import main

if __name__ == "__main__":
    main()
