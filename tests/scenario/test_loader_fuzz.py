"""Whatever a scenario file holds, the loader answers with a Scenario or one ScenarioError
line -- never another exception (contract: "never a traceback")."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksmfs.scenario.loader import ScenarioError, builtin_dir, parse_scenario

TEXTS = [p.read_text() for p in sorted(builtin_dir().glob("*.toml"))]
VALUES = ["-1", "0", "1", "2", "true", "false", '"x"', '"pool:guest-os"', '"value:0"',
          "1.5", "[]", "{}", '"unique"', "99999999999999999999", '"scan-time"', '""',
          "[{from = \"zero\", pages = 1}]", '"""a\n[[step]]\nb"""']


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(TEXTS))
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "value", "dup", "key"]))
        if op == "delete":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "value" and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}= {draw(st.sampled_from(VALUES))}"
        elif op == "key":
            lines.insert(i, f"{draw(st.sampled_from(['bogus', 'run', 'count', 'pages']))} = "
                            f"{draw(st.sampled_from(VALUES))}")
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_builtins_never_raise_anything_else(text: str) -> None:
    try:
        parse_scenario(text, "fuzz.toml")
    except ScenarioError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith("fuzz.toml")
        if e.line is not None:
            assert 1 <= e.line <= text.count("\n") + 1
