"""(1) Does the default assistant still sit where it did on the Assistant Axis?

The Assistant Axis (Lu et al. 2026) points from the mean of role-playing personas to the default assistant.
For each asserted layer, the checkpoint's default persona is projected on the baseline's axis; the test fails
when it moved further than the threshold (k × the baseline's noise floor, and at least a minimum fraction
of the axis length). For a training run, the worst step is asserted and named.
"""

from drift_suite.plugin import assert_check


def test_default_persona_projection(drift_checks, drift_layer):
    assert_check(drift_checks["projection", f"layer {drift_layer}"])
