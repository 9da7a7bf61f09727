"""(3) Can role-play still reach each persona?

For each role, how far its system prompt moves the checkpoint away from its default, along the direction it
moved the baseline model, as a ratio to the baseline (1.0 = unchanged, 0 = the role no longer takes hold,
> 1 = the model slips into it more easily than before).
"""

from drift_suite.plugin import assert_check


def test_persona_accessibility(drift_checks, drift_persona):
    assert_check(drift_checks["accessibility", drift_persona])
