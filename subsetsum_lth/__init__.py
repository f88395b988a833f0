"""subsetsum-lth: strong lottery tickets by subset sum (Pensia et al., NeurIPS 2020)."""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    """``subsetsum_lth.ticket(model, example_input, ...)`` and ``Ticket`` (see
    :mod:`subsetsum_lth.notebook`), imported on first use: the package itself stays light (its
    solver workers import only numpy)."""
    if name in ("ticket", "Ticket"):
        from subsetsum_lth import notebook
        return getattr(notebook, name)
    raise AttributeError(f"module 'subsetsum_lth' has no attribute {name!r}")
