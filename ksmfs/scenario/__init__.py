"""Scenarios: one KSM workload description, run against the simulated kernel (``sim``) or
the machine's real kernel (``real``), and compared counter by counter (``diff``).

The file format is the fixed contract docs/scenario-format.md (version 2).
"""

from __future__ import annotations

from ksmfs.scenario.loader import ScenarioError as ScenarioError
from ksmfs.scenario.loader import list_builtin as list_builtin
from ksmfs.scenario.loader import load_scenario as load_scenario
from ksmfs.scenario.model import ProcessSpec as ProcessSpec
from ksmfs.scenario.model import Scenario as Scenario
from ksmfs.scenario.model import Segment as Segment
from ksmfs.scenario.model import Step as Step
from ksmfs.scenario.model import VmaSpec as VmaSpec
