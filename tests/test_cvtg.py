"""CVTG-2K format and metrics on hand-made cases; the shipped synthetic benchmark."""

from __future__ import annotations

import json

import pytest

from varrl.data.synth import word_list
from varrl.eval.cvtg import (
    BenchmarkError,
    CvtgItem,
    ItemScore,
    aggregate,
    find_image,
    interleave,
    markdown_table,
    read_cvtg,
)
from varrl.eval.runner import fit_prompt
from varrl.eval.synthbench import build_synth_cvtg
from varrl.recipes.evaluate import shipped_cvtg_root
from varrl.textmetrics import SINGLE_QUOTES, WordStats, quoted_spans, quoted_words, word_stats

# --- target words ------------------------------------------------------------------------------------

def test_apostrophes_inside_single_quotes():
    assert quoted_spans("a sign saying 'Don't Stop' here") == ["Don't Stop"]
    assert quoted_words("a sign saying 'Don't Stop' here", SINGLE_QUOTES) == ["don't", "stop"]
    # an apostrophe outside a span opens nothing: kids' is preceded by a letter
    assert quoted_spans("the kids' sign reads 'FUN'") == ["FUN"]
    assert quoted_spans("it's a 'Cafe' and 'Bar'.") == ["Cafe", "Bar"]
    # closing before punctuation, opening after a comma
    assert quoted_spans("'A','B' and ('C')") == ["A", "B", "C"]
    assert quoted_spans("\u2018Rock\u2019n\u2019Roll\u2019 on a wall") == ["Rock\u2019n\u2019Roll"]
    # a quote followed by a space opens nothing; an unclosed quote is no span
    assert quoted_spans("' spaced ' and 'open") == []


def test_single_quote_styles_ignore_double_quotes():
    prompt = 'a "title" with \'Sale\' on it'
    assert quoted_words(prompt) == ["title", "sale"]
    assert quoted_words(prompt, SINGLE_QUOTES) == ["sale"]
    with pytest.raises(ValueError, match="quote styles"):
        quoted_words(prompt, ("backtick",))


# --- word accuracy and NED per image ------------------------------------------------------------------

def test_perfect_read():
    s = word_stats(["open", "door"], ["OPEN", "DOOR"])
    assert (s.n, s.hits, s.ned_sum) == (2, 2, 2.0)
    assert s.word_acc == 1.0 and s.ned == 1.0


def test_missing_word():
    s = word_stats(["open", "door"], ["OPEN"])
    assert s.word_acc == 0.5
    # 'door' vs 'open': 4 substitutions over 4 letters -> 0; so NED = (1 + 0) / 2
    assert s.ned == pytest.approx(0.5)


def test_misspelled_word():
    s = word_stats(["hello"], ["HELLD"])
    assert s.word_acc == 0.0
    assert s.ned == pytest.approx(0.8)  # one substitution over 5 letters


def test_extra_words_do_not_count_against():
    s = word_stats(["cat"], ["THE", "CAT", "SAT", "ON", "A", "MAT"])
    assert s.word_acc == 1.0 and s.ned == 1.0


def test_empty_ocr():
    s = word_stats(["open", "door"], [])
    assert (s.n, s.hits, s.ned_sum) == (2, 0, 0.0)
    assert s.word_acc == 0.0 and s.ned == 0.0


def test_uppercase_targets_and_apostrophes_from_a_prompt():
    item = CvtgItem("CVTG", 2, 0, "a poster with 'DON'T PANIC' and 'Exit' on it")
    assert item.words == ["don't", "panic", "exit"]
    s = word_stats(item.words, ["Don't", "panic", "EXlT"])
    assert s.hits == 2
    assert s.ned == pytest.approx((1 + 1 + 0.75) / 3)  # 'exlt' vs 'exit': one substitution over 4


def test_read_lines_are_split_like_ocr_words():
    # a whole OCR line counts as its whitespace-separated words
    assert word_stats(["open", "door"], ["OPEN DOOR"]).hits == 2
    # a target phrase is split too; a word is only counted once per occurrence in the targets
    assert word_stats(["open door", "open"], ["OPEN"]) == WordStats(3, 2, 2.0 + 0.0)


def test_the_trainers_evaluation_uses_the_same_numbers():
    """The trainer's periodic evaluation reports word_acc / ned from the OCR reward's components."""
    from varrl.rewards.text_ocr import text_ocr_terms

    cases = [(["open", "door"], ["OPEN", "DOOR"]), (["hello"], ["HELLD", "x"]), (["a", "b", "c"], []),
             (["don't", "stop"], ["DON'T", "ST0P", "extra"]), (["cat", "cat"], ["CAT"])]
    for targets, reads in cases:
        terms = text_ocr_terms(targets, [(r, 0.9) for r in reads])
        stats = word_stats(targets, reads)
        assert terms["word_acc"] == pytest.approx(stats.word_acc) and terms["ned"] == pytest.approx(stats.ned)


def test_word_stats_pool_by_addition():
    total = WordStats(2, 1, 1.5) + WordStats(3, 3, 3.0)
    assert (total.word_acc, total.ned) == (0.8, 0.9)
    assert WordStats().word_acc is None and WordStats().ned is None


# --- the benchmark format -----------------------------------------------------------------------------

def _write(root, subset, n, records):
    path = root / subset / f"{n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data_list": records}))


@pytest.fixture
def tiny_root(tmp_path):
    root = tmp_path / "bench"
    _write(root, "CVTG", 2, [{"index": 0, "prompt": "a sign 'OPEN' and a mug 'TEA'", "carrier_list": ["sign", "mug"],
                              "sentence_list": ["a sign 'OPEN'", "a mug 'TEA'"]},
                             {"index": 5, "prompt": "'A' 'B'", "carrier_list": [], "sentence_list": []}])
    _write(root, "CVTG", 3, [{"index": 1, "prompt": "'X Y' and 'Z'"}])
    # the published zip spells the second subset 'CVTG-style'
    _write(root, "CVTG-style", 2, [{"index": 0, "prompt": "red 'Don't Go' on a sign"}])
    (root / "CVTG" / "2_combined.json").write_text("{}")  # not an N.json file: ignored
    return root


def test_read_cvtg_tiny_root(tiny_root):
    items = read_cvtg(tiny_root)
    assert [(i.subset, i.regions, i.index) for i in items] == [
        ("CVTG", 2, 0), ("CVTG", 2, 5), ("CVTG", 3, 1), ("CVTG-Style", 2, 0)]
    first = items[0]
    assert first.words == ["open", "tea"] and first.carriers == ("sign", "mug")
    assert first.sentences == ("a sign 'OPEN'", "a mug 'TEA'")
    assert first.key == "CVTG/2/0"
    assert items[3].words == ["don't", "go"]


def test_interleave_covers_every_file_first(tiny_root):
    keys = [i.key for i in interleave(read_cvtg(tiny_root))]
    assert keys == ["CVTG/2/0", "CVTG/3/1", "CVTG-Style/2/0", "CVTG/2/5"]
    assert [i.key for i in interleave(read_cvtg(tiny_root), 2)] == ["CVTG/2/0", "CVTG/3/1"]


def test_find_image_any_case_and_suffix(tiny_root, tmp_path):
    item = read_cvtg(tiny_root)[3]
    images = tmp_path / "imgs"
    assert find_image(images, item) is None
    (images / "cvtg-style" / "2").mkdir(parents=True)
    (images / "cvtg-style" / "2" / "0.JPG").write_bytes(b"x")
    assert find_image(images, item) == images / "cvtg-style" / "2" / "0.JPG"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"items": []}', 'list "data_list"'),
    ('{"data_list": [{"index": 0}]}', 'non-empty string "prompt"'),
    ('{"data_list": [{"index": 0, "prompt": "a"}, {"index": 0, "prompt": "b"}]}', "appears twice"),
    ('{"data_list": [{"index": "a/b", "prompt": "a"}]}', "plain file name"),
    ('{"data_list": [{"index": true, "prompt": "a"}]}', "plain file name"),
])
def test_read_cvtg_bad_files(tmp_path, content, message):
    (tmp_path / "CVTG").mkdir()
    (tmp_path / "CVTG" / "2.json").write_text(content)
    with pytest.raises(BenchmarkError, match=message):
        read_cvtg(tmp_path)


def test_read_cvtg_missing_root(tmp_path):
    with pytest.raises(BenchmarkError, match="not found"):
        read_cvtg(tmp_path / "nope")
    with pytest.raises(BenchmarkError, match="holds no CVTG prompts"):
        read_cvtg(tmp_path)


# --- aggregation ----------------------------------------------------------------------------------------

def test_aggregate_pools_words_by_region_and_subset():
    a = ItemScore(CvtgItem("CVTG", 2, 0, "p"), WordStats(2, 2, 2.0), clip=0.5)
    b = ItemScore(CvtgItem("CVTG", 3, 0, "p"), WordStats(3, 0, 1.5), clip=0.7)
    c = ItemScore(CvtgItem("CVTG-Style", 2, 0, "p"), WordStats(2, 1, 1.0), clip=0.9)
    m = aggregate([a, b, c], clip_available=True)
    # overall: 3 hits of 7 words, NED (2 + 1.5 + 1) / 7, CLIP mean over images
    assert m["overall"] == {"word_acc": pytest.approx(3 / 7), "ned": pytest.approx(4.5 / 7),
                            "clip_score": pytest.approx(0.7), "images": 3, "words": 7}
    assert m["by_regions"]["2"]["word_acc"] == pytest.approx(3 / 4)
    assert m["by_regions"]["2"]["clip_score"] == pytest.approx(0.7)
    assert m["by_regions"]["3"] == {"word_acc": 0.0, "ned": 0.5, "clip_score": pytest.approx(0.7), "images": 1,
                                    "words": 3}
    assert m["by_subset"]["CVTG"]["word_acc"] == pytest.approx(2 / 5)
    assert m["by_subset"]["CVTG-Style"]["ned"] == pytest.approx(0.5)
    assert list(m["by_regions"]) == ["2", "3"] and list(m["by_subset"]) == ["CVTG", "CVTG-Style"]
    without = aggregate([a, b, c], clip_available=False)
    assert without["overall"]["clip_score"] is None
    table = markdown_table(m)
    assert "| overall | 0.4286 | 0.6429 | 0.7000 | 3 | 7 |" in table
    assert "| 3 regions | 0.0000 | 0.5000 |" in table and "| CVTG-Style |" in table
    assert "| overall | 0.4286 | 0.6429 | - |" in markdown_table(without)


# --- prompts a small model cannot read ---------------------------------------------------------------------

def test_fit_prompt_shortens_at_a_word_boundary(tiny_policy):
    check = tiny_policy.check_prompts  # the tiny model reads 63 characters
    short = "'OPEN' on a sign"
    assert fit_prompt(short, check) == short
    long = " ".join(["'WORD'"] * 20)
    fitted = fit_prompt(long, check)
    assert len(fitted) <= 63 and long.startswith(fitted) and fitted.endswith("'WORD'")
    assert fit_prompt("caf\u00e9 \u4e2d 'OPEN'", check) == "cafe 'OPEN'"


# --- the shipped benchmark -------------------------------------------------------------------------------

def test_shipped_benchmark_is_regenerated_exactly(tmp_path):
    build_synth_cvtg(tmp_path)
    shipped = shipped_cvtg_root()
    for sub in ("CVTG", "CVTG-Style"):
        for n in (2, 3, 4, 5):
            assert (tmp_path / sub / f"{n}.json").read_text() == (shipped / sub / f"{n}.json").read_text(), \
                f"{sub}/{n}.json differs: rebuild with `varrl data synth-cvtg --out varrl/assets/bench/cvtg_synth`"


def test_shipped_benchmark_is_cvtg_shaped_with_heldout_words():
    items = read_cvtg(shipped_cvtg_root())
    heldout = {w.lower() for w in word_list("heldout")}
    assert len(items) == 2 * 4 * 24
    for it in items:
        assert len(quoted_spans(it.prompt, SINGLE_QUOTES)) == it.regions == len(it.carriers) == len(it.sentences)
        assert len(it.words) == it.regions and set(it.words) <= heldout
        assert len(it.prompt) <= 127  # what the nano text encoder reads
        assert ("background" in it.prompt) == (it.subset == "CVTG-Style")
