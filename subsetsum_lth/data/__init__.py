"""Data sets used to train targets and to measure accuracy (MNIST, standard IDX files)."""
