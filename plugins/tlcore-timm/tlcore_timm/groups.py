"""Layer groups for timm models, from timm's own ``group_matcher``.

timm models describe their depth structure with ``model.group_matcher(coarse=True)``:
regular expressions that put each parameter in an ordered group (stem, then one
group per stage or block, with final norms merged into the last one). timm's
``group_parameters`` applies it; here the groups become :class:`tlcore.LayerGroup`
objects named ``stem``, ``stage1``, ``stage2``, ... and ``neck`` for trailing
parameters the matcher leaves unmatched (a final norm or pre-logits layer,
which timm orders last). Models without a matcher are grouped by their
top-level children instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from tlcore import LayerGroup


def layer_groups(model: nn.Module) -> tuple[list[LayerGroup], str]:
    """Ordered layer groups for a timm model, and how they were made ("timm group_matcher" or "top-level children")."""
    groups = _matcher_groups(model)
    if groups is not None:
        return groups, "timm group_matcher"
    return children_groups(model), "top-level children"


def _matcher_groups(model: nn.Module) -> list[LayerGroup] | None:
    from timm.models import group_parameters

    matcher_fn = getattr(model, "group_matcher", None)
    if not callable(matcher_fn):
        return None
    for coarse in (True, False):  # some models (RDNet) implement only the fine grouping
        try:
            matcher = matcher_fn(coarse=coarse)
            by_id = group_parameters(model, matcher)
        except Exception:  # an unimplemented or broken matcher: try the next way
            continue
        ordered = [names for _, names in sorted(by_id.items()) if names]
        if len(ordered) >= 2:  # one group would make freezing by depth meaningless
            return _name_groups(model, ordered, _unmatched_test(matcher))
    return None


def _unmatched_test(matcher: dict | Callable) -> Callable[[str], bool] | None:
    """A test for "timm's dict matcher matches none of its patterns on this name"; None for callable matchers."""
    if not isinstance(matcher, dict):
        return None
    patterns = []
    for spec in matcher.values():
        if spec is None:
            continue
        if isinstance(spec, (list, tuple)):
            patterns += [re.compile(sub[0]) for sub in spec]
        else:
            patterns.append(re.compile(spec))
    return lambda name: not any(p.match(name) for p in patterns)


def _name_groups(model: nn.Module, ordered: list[list[str]], unmatched: Callable[[str], bool] | None) -> list[LayerGroup]:
    names = ["stem"] + [f"stage{i}" for i in range(1, len(ordered))]
    # timm sorts parameters no pattern matches last (ordinal inf): they are a neck, not a stage.
    if unmatched is not None and all(unmatched(p) for p in ordered[-1]):
        names[-1] = "neck"
    return [LayerGroup(name, compress_prefixes(model, params)) for name, params in zip(names, ordered, strict=True)]


def compress_prefixes(model: nn.Module, param_names: list[str]) -> tuple[str, ...]:
    """The shortest module prefixes that cover ``param_names`` and no other parameter of ``model``.

    Whole modules are named where all their parameters are in the set, so the
    group also owns those modules' buffers (batch-norm statistics).
    """
    wanted = set(param_names)
    # For each module prefix: does it hold a parameter outside the set?
    foreign: dict[str, bool] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            foreign[prefix] = foreign.get(prefix, False) or name not in wanted
    prefixes: list[str] = []
    seen: set[str] = set()
    for name in param_names:
        parts = name.split(".")
        chosen = name
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if not foreign.get(prefix, True):
                chosen = prefix
                break
        if chosen not in seen:
            seen.add(chosen)
            prefixes.append(chosen)
    return tuple(prefixes)


def children_groups(model: nn.Module) -> list[LayerGroup]:
    """Generic grouping: one group per top-level child with parameters, in definition order.

    The model's body (a top-level ``Sequential``/``ModuleList`` of three or
    more parameterised blocks holding over half the parameters, the usual
    ``stages`` or ``blocks``) is split into one group per block, named
    ``<child>.<index>``. Parameters held directly by the model (tokens,
    position embeddings) join the first group.
    """
    total = sum(p.numel() for p in model.parameters())
    groups: list[tuple[str, list[str]]] = []
    for child_name, child in model.named_children():
        size = sum(p.numel() for p in child.parameters())
        if size == 0:
            continue
        blocks = [n for n, m in child.named_children() if any(True for _ in m.parameters())]
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(blocks) >= 3 and 2 * size > total:
            # Parameters held by the container itself (rare) go with its first block.
            own = [f"{child_name}.{n}" for n, _ in child.named_parameters(recurse=False)]
            for index, block_name in enumerate(blocks):
                prefixes = [f"{child_name}.{block_name}"] + (own if index == 0 else [])
                groups.append((f"{child_name}.{block_name}", prefixes))
        else:
            groups.append((child_name, [child_name]))
    root = [name for name, _ in model.named_parameters(recurse=False)]
    if not groups:
        return [LayerGroup("all", tuple(root))]
    groups[0] = (groups[0][0], root + groups[0][1])
    return [LayerGroup(name, tuple(prefixes)) for name, prefixes in groups]
