"""subsetsum-lth: strong lottery tickets by subset sum (Pensia et al., NeurIPS 2020)."""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

