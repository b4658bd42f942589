"""`python -m datamodules.medmnist_c ...`: see `cli`."""
from datamodules.medmnist_c.cli import main  # workers then pickle functions under the importable names

if __name__ == "__main__":
    raise SystemExit(main())
