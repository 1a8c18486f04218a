import pytest

from service.store import Store


@pytest.fixture
def store(redis_base_url):
    """A Store on database 1 of the session's Redis, emptied before each test."""
    store = Store.from_url(f"{redis_base_url}?db=1", score_ttl_s=60, job_ttl_s=60)
    store.client.flushdb()
    yield store
    store.close()
