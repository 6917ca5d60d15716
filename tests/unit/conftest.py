import pytest

from tests.postgres import reachable_postgres_url


@pytest.fixture(scope="session")
def postgres_base_url() -> str:
    return reachable_postgres_url()
