from __future__ import annotations

import pytest

from varrl.textmetrics import ned_similarity, quoted_words, word_hits


def test_quoted_words_quote_styles():
    assert quoted_words('the text "OPEN" in red') == ["open"]
    assert quoted_words("a sign that says 'Exit' on blue") == ["exit"]
    assert quoted_words("curly \u201cCafe\u201d here") == ["cafe"]
    assert quoted_words('"A", \'b\' and \u201cC\u201d') == ["a", "b", "c"]


def test_quoted_words_splits_spans_and_ignores_unquoted():
    assert quoted_words('"Hello World" and "foo  bar baz"') == ["hello", "world", "foo", "bar", "baz"]
    assert quoted_words("no quotes at all") == []
    assert quoted_words('an "unclosed quote') == []


def test_word_hits():
    assert word_hits(["Open", "door", "x"], ["OPEN", "DOOR"]) == 2
    assert word_hits(["open"], ["opens", "pen"]) == 0
    assert word_hits([], ["a"]) == 0
    assert word_hits(["a", "b"], []) == 0


def test_ned_similarity_by_hand():
    assert ned_similarity("open", ["opan"]) == pytest.approx(0.75)  # 1 substitution / 4
    assert ned_similarity("open", []) == 0.0
    assert ned_similarity("OPEN", ["open"]) == 1.0
    # the closest read counts: 'opens' is 1 insertion over max length 5
    assert ned_similarity("open", ["xyz", "opens"]) == pytest.approx(0.8)
    # nothing in common: distance 4 over length 4
    assert ned_similarity("open", ["abcd"]) == 0.0
    # 'cat' vs 'cart': one insertion, max length 4
    assert ned_similarity("cat", ["cart"]) == pytest.approx(0.75)
