"""``python -m mmlens ...`` = ``mmlens ...``; lets launchers that take a module run the CLI on every process,
e.g. ``accelerate launch --multi_gpu --num_processes 4 -m mmlens shift generate ...``."""

from mmlens.cli import main

if __name__ == "__main__":
    main()
