"""``python -m train``: see ``train/main.py``."""

from train.main import main

main()
