"""`python -m accel`: the `accel` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="accel")
