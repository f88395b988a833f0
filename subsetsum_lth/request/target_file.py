"""The flags that describe a target file (--target, --layers, --arch, the preprocessing)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from subsetsum_lth.errors import UserError
from subsetsum_lth.target import load_target
from subsetsum_lth.preprocess import Preprocessing

#: the flags that describe a --target file (their options: commands/_target_args.py)
TARGET_FLAGS = (("--layers", "layers"), ("--arch", "arch"), ("--input-normalize", "input_normalize"),
                ("--input-scale", "input_scale"), ("--fold-preprocessing", "fold_preprocessing"))


@dataclass(frozen=True, kw_only=True)
class TargetFile:
    """A target file and how to read it: layer order, architecture, input preprocessing."""

    target: Path | None = None
    layers: str | None = None
    arch: str | None = None
    input_normalize: str | None = None
    input_scale: str | None = None
    fold_preprocessing: bool | None = None

    @staticmethod
    def read_target_flags(ns: argparse.Namespace) -> dict:
        return {name: getattr(ns, name, None) for _, name in TARGET_FLAGS}

    def target_flags_given(self) -> list[str]:
        return [flag for flag, name in TARGET_FLAGS if getattr(self, name) is not None]

    def check_target_flags(self) -> None:
        """--layers, --arch and the preprocessing flags describe a --target file."""
        given = self.target_flags_given()
        if self.target is None and given:
            raise UserError(f"{', '.join(given)} describe a --target file; pass --target or drop them")

    def preprocessing(self):
        """The Preprocessing the flags declare, or None when none was given."""
        if self.input_normalize is None and self.input_scale is None:
            return None
        return Preprocessing.parse(self.input_normalize, self.input_scale)

    def load(self, info: dict | None = None):
        """The target the flags describe (``target`` must be set); ``info`` receives how it was read."""
        return load_target(self.target, layers=self.layers, preprocessing=self.preprocessing(), arch=self.arch,
                           info=info, fold_preprocessing=bool(self.fold_preprocessing))


def check_expected_accuracy(acc: float | None) -> None:
    if acc is not None and acc > 100:
        raise UserError(f"--expected-accuracy is a fraction or a percentage, got {acc:g}")
