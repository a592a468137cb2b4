"""A pytest plugin (-p numba_pytest_plugin) for numba-cuda's shipped tests.

numba.cuda.testing.CUDATestCase uses a class fixture, initialize_from_pytest_config,
that numba-cuda defines in its repository's top-level conftest.py, which the wheel
does not ship; without it every CUDATestCase errors at setup. This stands in for it:
the only thing it sets is whether failed FileCheck reproducers are dumped (no).
"""
import pytest


@pytest.fixture(scope="class")
def initialize_from_pytest_config(request):
    request.cls._dump_failed_filechecks = False
