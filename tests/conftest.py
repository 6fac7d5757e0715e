import os
import shutil
import sys

import pytest

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


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory):
    """The root CMake build in a temporary folder, shared by the tests of the C++ builds
    (test_cmake.py, test_blpseg_export.py): the lam_ops library, its ctests and examples/segment.
    CPU-only: setup.py already compiles the .cu files, and nvcc would add minutes to CI."""
    import torch.utils
    from build_env import ROOT, run_checked

    build = tmp_path_factory.mktemp("cmake")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run_checked(
        [
            "cmake",
            "-S",
            ROOT,
            "-B",
            build,
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLAM_OPS_CUDA=OFF",
            "-DLAM_OPS_EXAMPLES=ON",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        ]
    )
    run_checked(["cmake", "--build", build, "--parallel", os.environ.get("MAX_JOBS", "2")])
    return build
