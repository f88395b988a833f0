"""Mutation tests of the certificate: each mutant below is a plausible, unsound edit of the §2
recursion (certify.compose) or of the error matrix (certify.error_matrix). With a mutant patched
in, the guarantee check of the real suite (tests.tight_cases.check_case: this suite's attack
against the package's certificate on targets where the bound is attained) must fail with
"attack > certified". A surviving mutant fails this module.
"""
from __future__ import annotations

import numpy as np
import pytest

from subsetsum_lth import certify
from subsetsum_lth.certify import check_soundness
from subsetsum_lth.errors import CertificateViolation
from tests.tight_cases import check_case, real_check_cases


def _compose(norms_W, norms_E, norms_eb, norms_b, r, lips=None, *, w_factor=True, eta_at_R_plus_delta=True,
             bias_in_R=True, bias_error=True, scale=1.0, lipschitz=True):
    """certify.compose with one term switchable off (a copy: the package's own is never edited)."""
    R, delta = float(r), 0.0
    radii, ins, outs = [], [], []
    lips = [1.0] * len(norms_W) if lips is None or not lipschitz else lips
    for nW, nE, neb, nb, L in zip(norms_W, norms_E, norms_eb, norms_b, lips):
        rho = (R + delta) if eta_at_R_plus_delta else R
        eta = rho * nE + (neb if bias_error else 0.0)
        new_delta = L * ((nW * delta if w_factor else delta) + eta)
        radii.append(R)
        ins.append(delta)
        outs.append(new_delta)
        delta = new_delta
        R = L * (nW * R + (nb if bias_in_R else 0.0))
    outs[-1] *= scale
    return radii, ins, outs


def _error_matrix_without_E_minus(W, M, signed):
    return W - M.w_plus


MUTANTS = {
    "bound x 0.9": ("compose", lambda *a: _compose(*a, scale=0.9)),
    "||W|| factor dropped (delta' = delta + eta)": ("compose", lambda *a: _compose(*a, w_factor=False)),
    "eta(R) for eta(R + delta)": ("compose", lambda *a: _compose(*a, eta_at_R_plus_delta=False)),
    "||b|| dropped from R": ("compose", lambda *a: _compose(*a, bias_in_R=False)),
    "||e_b|| dropped": ("compose", lambda *a: _compose(*a, bias_error=False)),
    "E- dropped from [E+ E-]": ("error_matrix", _error_matrix_without_E_minus),
}


def _kills(monkeypatch, name):
    attr, fn = MUTANTS[name]
    monkeypatch.setattr(certify, attr, fn)
    killed = []
    for case in real_check_cases():
        try:
            check_case(case, tight=0)      # the soundness half of the real suite's check
        except AssertionError as exc:
            assert "> certified" in str(exc), exc
            killed.append((case.name, str(exc)))
    return killed


def test_unmutated_survives_every_check():
    for case in real_check_cases():
        check_case(case)


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_is_killed(monkeypatch, name):
    killed = _kills(monkeypatch, name)
    assert killed, f"mutant {name!r} survived every guarantee check: the suite cannot see it"


def test_identity_mutant_is_not_killed(monkeypatch):
    """The harness itself: patching in the unmutated recursion (a copy) kills nothing, so a
    kill above is the mutant's doing, not the patching's."""
    monkeypatch.setattr(certify, "compose", lambda *a: _compose(*a))
    for case in real_check_cases():
        check_case(case)


def test_pipeline_own_check_rejects_a_cut_bound(monkeypatch, tmp_path):
    """With the bound cut by 10%, a real run on a target where it is attained (depth 1, one
    input, no bias, non-negative domain, closest subsets of m = 2 units) ends in the run's own
    CertificateViolation."""
    from subsetsum_lth.approximate import ApproximateConfig, approximate
    from subsetsum_lth.construction import ConstructionConfig
    from subsetsum_lth.solve import SolveConfig
    from subsetsum_lth.target import Layer, Target
    monkeypatch.setattr(certify, "compose", MUTANTS["bound x 0.9"][1])
    t = Target([Layer(np.array([[1.7], [-0.9]]), None)])
    cfg = ApproximateConfig(
        construction=ConstructionConfig(input_domain="nonnegative", seed=0, block_width=2, width="formula"),
        solve=SolveConfig(solver="mitm", workers=1), weight_eps=1e-3, input_radius=1.0,
        allow_infeasible=True, plots=False, empirical_samples=32, ascent_steps=10)
    with pytest.raises(CertificateViolation, match="exceeds the certified bound"):
        approximate(t, cfg, tmp_path / "run")


@pytest.mark.parametrize("emp,cert", [(1.0, 0.5), (0.9, 0.8), (float("nan"), 1.0), (float("inf"), 1e300)])
def test_check_soundness_raises(emp, cert):
    with pytest.raises(CertificateViolation, match="exceeds the certified bound"):
        check_soundness(emp, cert)


@pytest.mark.parametrize("emp,cert", [(0.5, 1.0), (1.0, 1.0), (1.0 + 1e-12, 1.0), (0.0, 1e-300)])
def test_check_soundness_accepts(emp, cert):
    check_soundness(emp, cert)
