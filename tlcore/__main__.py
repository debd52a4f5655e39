"""``python -m tlcore`` works like the ``tlcore`` command."""

from tlcore.cli import main

if __name__ == "__main__":
    main()
