"""(2) Does the Assistant Axis itself point the same way?

The checkpoint's own axis (its default minus its role-play mean) is compared with the baseline's axis at
each asserted layer; the angle between them must stay within the noise-calibrated threshold. A rotated axis
means "assistant-like" itself changed meaning, not only where the model sits on it.
"""

from drift_suite.plugin import assert_check


def test_assistant_axis_rotation(drift_checks, drift_layer):
    assert_check(drift_checks["rotation", f"layer {drift_layer}"])
