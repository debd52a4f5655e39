"""Listings and name look-ups ask only the families that can answer: a family's names() may import a large library."""

from __future__ import annotations

import fnmatch
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tlcore.errors import UnknownNameError
from tlcore.registry import Catalog, Register, patterns_may_overlap

REPO = Path(__file__).resolve().parent.parent


def catalog_with_two_providers() -> tuple[Catalog, list[str]]:
    """``alpha:*`` and ``beta:*`` families; the returned list records which family's names() ran."""
    asked: list[str] = []
    catalog = Catalog("backbones")

    def family(prefix: str, models: list[str]) -> None:
        names = [f"{prefix}:{model}" for model in models]

        def listed() -> list[str]:
            asked.append(prefix)
            return names

        Register(catalog, prefix).family(f"{prefix}:*", lambda name: (lambda *a: name) if name in names else None, listed)

    family("alpha", ["resnet18", "resnet50"])
    family("beta", ["resnet18", "vit_b_16"])
    return catalog, asked


def test_a_listing_asks_only_the_families_its_pattern_can_reach():
    catalog, asked = catalog_with_two_providers()
    assert [row.name for row in catalog.listing("alpha:*")] == ["alpha:resnet18", "alpha:resnet50"]
    assert asked == ["alpha"]
    assert [row.name for row in catalog.listing("alpha:resnet18", with_info=True)] == ["alpha:resnet18"]
    assert asked == ["alpha", "alpha"]
    assert [row.name for row in catalog.listing("*:resnet18")] == ["alpha:resnet18", "beta:resnet18"]
    assert asked[2:] == ["alpha", "beta"]  # a pattern both can match asks both
    assert catalog.listing("gamma:*") == [] and asked[4:] == []


def test_an_unknown_name_is_compared_with_its_providers_names_first():
    catalog, asked = catalog_with_two_providers()
    with pytest.raises(UnknownNameError, match="did you mean alpha:resnet18"):
        catalog.resolve("alpha:resnt18")
    assert asked == ["alpha"]
    # nothing close under its own provider: every provider's names are offered
    with pytest.raises(UnknownNameError, match="did you mean beta:vit_b_16"):
        catalog.resolve("alpha:vit_b_16")
    assert asked[1:] == ["alpha", "alpha", "beta"]
    # a misspelt provider matches no family: every family is asked
    with pytest.raises(UnknownNameError, match="alpha:resnet50"):
        catalog.resolve("alpah:resnet50")
    assert sorted(asked[4:]) == ["alpha", "beta"]


def test_pattern_overlap_never_misses_a_common_name():
    """Checked against fnmatch on every short name over a small alphabet: False only when no name matches both."""
    alphabet = "ab:"
    names = ["".join(chars) for size in range(5) for chars in itertools.product(alphabet, repeat=size)]
    pieces = ["a", "b", ":", "*", "?", "[ab]", "[!a]"]
    patterns = ["".join(chars) for size in range(1, 4) for chars in itertools.product(pieces, repeat=size)]
    disjoint = 0
    for first, second in itertools.product(patterns[::3], patterns[::5]):
        common = any(fnmatch.fnmatchcase(n, first) and fnmatch.fnmatchcase(n, second) for n in names)
        if common:
            assert patterns_may_overlap(first, second), (first, second)
        disjoint += not patterns_may_overlap(first, second)
    assert disjoint > 100  # the test does skip families: it is not always True
    assert not patterns_may_overlap("torchvision:*", "timm:*")
    assert not patterns_may_overlap("torchvision:resnet18", "timm:*")
    assert patterns_may_overlap("*", "timm:*") and patterns_may_overlap("t*", "timm:*")
    assert patterns_may_overlap("timm:resnet18", "timm:*") and not patterns_may_overlap("x*18", "*50")


def test_listing_another_providers_backbones_does_not_import_timm():
    """`tlcore list backbones 'NAME:*'` with the timm plugin loaded: timm's family is never listed."""
    code = """
import json, sys
import tlcore_timm
from tlcore.registry import Catalog, Register
catalog = Catalog("backbones")
tlcore_timm.tlcore_register_backbones(Register(catalog, "timm"))
Register(catalog, "other").family("other:*", lambda name: None, lambda: ["other:net"])
rows = [row.name for row in catalog.listing("other:*", with_info=True)]
try:
    catalog.resolve("other:nett")
except Exception as error:
    message = str(error)
print(json.dumps({"rows": rows, "message": message, "timm": "timm" in sys.modules, "torch": "torch" in sys.modules}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == ["other:net"] and "did you mean other:net" in result["message"]
    assert not result["timm"] and not result["torch"]
