"""YAML read safely: the safe loader, after guards that cost nothing on a hostile text.
Recipes, network-bending files and Broad's cluster dicts all come in as YAML (JSON is YAML
too), from users; each reader goes through `load_yaml`, which refuses a text that is too
large, nested too deeply (libyaml's loader recurses in C and a deep file kills the process)
or uses aliases (a few KB of them expand to millions of values) with one StudioError.
"""

from __future__ import annotations

import re
from typing import Any

from engine.base.errors import StudioError

MAX_YAML_BYTES = 8 * 2**20  # Broad's cluster dict of a 1024 px model is ~0.2 MiB


def safe_loader() -> Any:
    import yaml

    # libyaml's safe loader when built in: the same safe subset, ~10x faster on a cluster dict.
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# Deeper YAML is refused before it is built: libyaml's loader recurses in C per level, and
# about 25,000 nested "[" overflow a thread's stack and kill the whole server (signal 11)
# instead of raising RecursionError. Broad's files nest 3 deep.
MAX_YAML_DEPTH = 100


def flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow brackets ([ and {) outside quotes and comments
    (0 for a text with too few brackets to pass MAX_YAML_DEPTH).

    Counted by hand before any YAML library sees the text: libyaml's scanner reads ahead
    through flow brackets and, from PyYAML 6.0.4 on, refuses deep nesting with its own
    ScannerError, so how a file is refused must not depend on which libyaml is installed."""
    if text.count("[") + text.count("{") <= MAX_YAML_DEPTH:
        return 0  # too few brackets to nest past the limit (most files end here)
    depth = deepest = 0
    quote = ""
    escaped_until = 0  # a backslash in a double-quoted string escapes the next character
    for match in FLOW_MARKS.finditer(text):
        char, at = match.group(), match.start()
        if at < escaped_until:
            continue
        if quote:
            if quote == '"' and char == "\\":
                escaped_until = at + 2
            elif char == quote:
                quote = ""
            continue
        before = text[at - 1] if at else "\n"
        if char == "#" and before in " \t\n":
            quote = "\n"  # a comment runs to the end of the line
        elif char in "'\"" and before in " \t\n[{,:":
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


FLOW_MARKS = re.compile(r"[\[\]{}'\"#\\\n]")


def load_yaml(text: str, what: str) -> Any:
    """yaml.load with the safe loader, once the text is at most MAX_YAML_BYTES characters and
    a scan (libyaml's scanner does not recurse) shows the nesting stays within MAX_YAML_DEPTH
    and no alias repeats a part (a few KB of aliases expand to millions of values);
    StudioError if not. `what` names the text in the message ("cluster YAML")."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise StudioError(f"the {what} is larger than {MAX_YAML_BYTES // 2**20} MiB")
    if flow_depth(text) > MAX_YAML_DEPTH:
        raise StudioError(f"the {what} is nested too deeply to read (more than "
                          f"{MAX_YAML_DEPTH} levels)")
    loader = safe_loader()
    opens = (yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken,
             yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)
    closes = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)
    depth = 0
    for token in yaml.scan(text, Loader=loader):
        if isinstance(token, yaml.AliasToken):  # 28 KB of '*row' repeats took 22 s to walk
            raise StudioError(f"the {what} uses YAML aliases (*name), which neither recipes "
                              f"nor network-bending files need; write the values out")
        if isinstance(token, opens):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise StudioError(f"the {what} is nested too deeply to read (more than "
                                  f"{MAX_YAML_DEPTH} levels)")
        elif isinstance(token, closes):
            depth -= 1
    return yaml.load(text, Loader=loader)
