"""docs/plugins.md follows the hooks: every hookspec has a section with its exact signature, and no other hook is named."""

import inspect
import re
from pathlib import Path

from tlcore import hookspecs, pytest_plugin

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HEADING = re.compile(r"^### `(tlcore_\w+)\((.*)\) -> (.+)`$", re.MULTILINE)
# Mentions that can only mean a hook: headings, the hook families, and calls or definitions of tlcore_ names.
MENTIONS = re.compile(r"\b(tlcore_(?:register|pretrained)_\w+)|\b(tlcore_\w+)\(")


def hookspecs_by_name() -> dict:
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: obj for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, marker)}


def annotation(value) -> str:
    # hookspecs uses `from __future__ import annotations`: annotations are the source text
    return value if isinstance(value, str) else inspect.formatannotation(value)


def rendered(function) -> tuple[str, str]:
    """(parameters, return annotation) as the page writes them: `name: Type, ...` and `Type`."""
    signature = inspect.signature(function)
    parameters = []
    for parameter in signature.parameters.values():
        text = parameter.name
        if parameter.annotation is not inspect.Parameter.empty:
            text += f": {annotation(parameter.annotation)}"
        if parameter.default is not inspect.Parameter.empty:
            text += f" = {parameter.default!r}"
        parameters.append(text)
    return ", ".join(parameters), annotation(signature.return_annotation)


def sections() -> dict[str, tuple[str, str, str]]:
    """Hook name to (parameters, return annotation, section text) from the page."""
    text = PAGE.read_text(encoding="utf-8")
    found = {}
    matches = list(HEADING.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else text.find("\n## ", match.end())
        assert match.group(1) not in found, f"{match.group(1)} has two sections"
        found[match.group(1)] = (match.group(2), match.group(3), text[match.end() : end if end != -1 else None])
    return found


def test_there_are_hookspecs_to_document():
    assert len(hookspecs_by_name()) >= 7  # the comparison below is not vacuous


def test_every_hook_has_a_section_with_its_exact_signature():
    documented = sections()
    specs = hookspecs_by_name()
    assert sorted(documented) == sorted(specs), "docs/plugins.md must have one `### hook(...)` section per hookspec"
    for name, function in specs.items():
        params, returns, _ = documented[name]
        assert (params, returns) == rendered(function), f"docs/plugins.md shows another signature for {name}"


def test_firstresult_hooks_say_so_and_others_do_not():
    documented = sections()
    for name, function in hookspecs_by_name().items():
        firstresult = getattr(function, f"{hookspecs.PROJECT}_spec").get("firstresult", False)
        assert ("firstresult" in documented[name][2]) == firstresult, name


def test_every_section_has_an_example():
    for name, (_, _, body) in sections().items():
        assert "```python" in body and f"def {name}(" in body, f"the section of {name} needs an example implementing it"


def test_every_hook_named_in_the_page_exists():
    fixtures = {name for name in vars(pytest_plugin) if name.startswith("tlcore_")}
    text = PAGE.read_text(encoding="utf-8")
    named = {family or call for family, call in MENTIONS.findall(text)} - fixtures
    unknown = sorted(named - set(hookspecs_by_name()))
    assert not unknown, f"docs/plugins.md names hooks that do not exist: {unknown}"


def test_signature_rendering_notices_a_change():
    def tlcore_register_backbones(register: "Register", extra: int = 1) -> None:  # noqa: F821
        """The spec with an argument added: it must render differently, so the comparison above can fail."""

    assert rendered(tlcore_register_backbones) == ("register: Register, extra: int = 1", "None")
    assert rendered(hookspecs.tlcore_register_backbones) == ("register: Register", "None")
