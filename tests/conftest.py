import os
import sys

# tests/lam_cases.py is imported by the backend tests as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

# Property-based tests (tests/test_lam_properties.py): a bounded, derandomised run by default, so
# CI is quick and reproducible; HYPOTHESIS_PROFILE=long searches much further (a local run).
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # only the property tests need it; they import it themselves and fail loudly
    pass
else:
    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", max_examples=300, derandomize=True, database=None, print_blob=True, **_common)
    settings.register_profile("long", max_examples=3000, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
