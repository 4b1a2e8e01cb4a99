import pytest

from palate.feedback.app import create_app
from palate.feedback.server import BackgroundServer
from tests.feedback.helpers import Setup, candidate_rows

XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"><b>bold</b>'


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A live server on a fresh SQLite database with five projects (one per task type, plus another
    team's project), an admin and three labelers."""
    tmp = tmp_path_factory.mktemp("site")
    st = Setup(str(tmp / "feedback.db"))
    rows = candidate_rows(6) + [{"prompt": "Show me HTML " + XSS, "response": XSS, "model": "evil"},
                                {"prompt": "Show me HTML " + XSS, "response": "plain & simple <tag>", "model": "nice"}]
    gold = [{"prompt": "Gold: which is a greeting?", "responses": ["Hello there!", "zzz"], "answer": 0}]
    st.project("ab", "pairwise", tmp, rows, gold=gold, overlap=2, gold_every=3,
               guidelines="Prefer the response that answers the question.\n\nIgnore formatting.")
    st.project("rk", "ranking", tmp, candidate_rows(3, per_prompt=3), guidelines="Rank best first.")
    st.project("lk", "rating", tmp, candidate_rows(2, per_prompt=1), criteria=["helpfulness", "honesty"], scale=(1, 5))
    st.project("th", "thumbs", tmp, candidate_rows(2, per_prompt=1))
    st.project("other", "pairwise", tmp, [{"prompt": "secret prompt", "response": "SECRET-TEXT-1"},
                                          {"prompt": "secret prompt", "response": "SECRET-TEXT-2"}])
    st.labeler("boss", role="admin", password="boss-password")
    st.labeler("ann", group="g1", password="ann-password", projects=["ab", "rk", "lk", "th"])
    st.labeler("bob", group="g2", password="bob-password", projects=["ab"])
    st.labeler("eve", group="g3", password="eve-password", projects=["other"])
    with BackgroundServer(create_app(st.db)) as server:
        st.url = server.url
        yield st
