"""Baselines beside the subset-sum construction.

* :mod:`single_sample` — Malach et al. (2020)-style: each target weight is approximated by the
  single closest random coefficient (a product ``v*u`` or one random weight), no subset sum.
* :mod:`greedy_selection` — Ye et al. (ICML 2020) greedy forward selection of the hidden
  neurons of the trained target (average of the selected neurons, repeats allowed).
"""
