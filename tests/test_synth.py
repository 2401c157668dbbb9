from __future__ import annotations

import numpy as np
import pytest

from varrl.data.synth import MIN_INK_PX, SynthConfig, SynthGenerator, quote_words, sample_seed, word_list


def _overlap(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def test_same_index_same_sample_across_instances():
    g1 = SynthGenerator(SynthConfig(), "train", seed=3)
    g2 = SynthGenerator(SynthConfig(), "train", seed=3)
    for i in (0, 7, 123):
        a, b = g1.sample(i), g2.sample(i)
        assert a.image.dtype == np.uint8 and a.image.shape == (128, 128, 3)
        np.testing.assert_array_equal(a.image, b.image)
        assert a.prompt == b.prompt
        assert a.words == b.words
        assert a.boxes == b.boxes
        assert a.n_regions == b.n_regions == len(a.words)


def test_different_index_or_seed_differs():
    g = SynthGenerator(SynthConfig(), "train", seed=0)
    a, b = g.sample(0), g.sample(1)
    assert not np.array_equal(a.image, b.image)
    assert a.prompt != b.prompt
    c = SynthGenerator(SynthConfig(), "train", seed=1).sample(0)
    assert not np.array_equal(a.image, c.image)
    assert sample_seed("train", 0, 0) != sample_seed("train", 1, 0)
    assert sample_seed("train", 0, 0) != sample_seed("heldout", 0, 0)
    assert sample_seed("train", 5, 2) == sample_seed("train", 5, 2)


def test_boxes_inside_disjoint_and_tall_enough():
    g = SynthGenerator(SynthConfig(), "train", seed=0)
    size = 128
    for i in range(30):
        s = g.sample(i)
        assert len(s.boxes) == len(s.words) == s.n_regions >= 1
        for x0, y0, x1, y1 in s.boxes:
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert y1 - y0 >= MIN_INK_PX == 12
        for j in range(len(s.boxes)):
            for k in range(j + 1, len(s.boxes)):
                assert not _overlap(s.boxes[j], s.boxes[k]), (i, s.boxes[j], s.boxes[k])


def test_words_are_double_quoted_in_prompt():
    g = SynthGenerator(SynthConfig(), "train", seed=0)
    for i in range(20):
        s = g.sample(i)
        for w in s.words:
            assert f'"{w}"' in s.prompt
        assert s.prompt.count('"') == 2 * len(s.words)


def test_quote_words():
    assert quote_words(["a"]) == '"a"'
    assert quote_words(["a", "b"]) == '"a" and "b"'
    assert quote_words(["a", "b", "c"]) == '"a", "b" and "c"'


def test_region_mix_exact_bin():
    g = SynthGenerator(SynthConfig(region_mix={"2": 1.0}), "train", seed=0)
    assert [g.sample(i).n_regions for i in range(20)] == [2] * 20


def test_region_mix_many_bin():
    # Short words at small sizes leave room on the canvas for 6..8 regions.
    cfg = SynthConfig(region_mix={">5": 1.0}, max_regions=8, cap_px=(12, 14), word_len=(3, 5))
    g = SynthGenerator(cfg, "train", seed=0)
    counts = [g.sample(i).n_regions for i in range(40)]
    assert all(1 <= c <= 8 for c in counts)
    assert sum(c >= 6 for c in counts) >= 0.9 * len(counts)
    assert len(set(counts)) >= 2  # 6..8 drawn, not a constant


def test_heldout_and_train_words_disjoint():
    train, held = set(word_list("train")), set(word_list("heldout"))
    assert train and held
    assert not train & held
    assert len(held) == len(word_list("all")) // 10
    assert train | held == set(word_list("all"))
    g = SynthGenerator(SynthConfig(), "heldout", seed=0)
    for i in range(10):
        assert all(w.lower() in {h.lower() for h in held} for w in g.sample(i).words)
    with pytest.raises(ValueError, match="split must be"):
        word_list("validation")


def test_unknown_font_is_a_clear_error():
    g = SynthGenerator(SynthConfig(fonts=("NoSuchFont",)), "train")
    with pytest.raises(ValueError, match="NoSuchFont.*not found"):
        g.sample(0)


def test_config_validation():
    with pytest.raises(ValueError, match="region_mix keys"):
        SynthConfig(region_mix={"7": 1.0})
    with pytest.raises(ValueError, match="positive total"):
        SynthConfig(region_mix={"1": 0.0})
    with pytest.raises(ValueError, match="12px"):
        SynthConfig(cap_px=(8, 20))
    with pytest.raises(ValueError, match="no words of length"):
        SynthGenerator(SynthConfig(word_len=(40, 50)))


def test_renderings_are_legible_to_ocr():
    from varrl.ocr import OcrEngine

    engine = OcrEngine()
    g = SynthGenerator(SynthConfig(), "train", seed=0)
    total = hits = 0
    for i in range(12):
        s = g.sample(i)
        reads = {w.text.lower() for w in engine(s.image)}
        total += len(s.words)
        hits += sum(w.lower() in reads for w in s.words)
    assert total >= 12
    assert hits >= 0.9 * total, f"OCR read {hits}/{total} words"


def test_cells_layout_puts_character_j_in_cell_j():
    cfg = SynthConfig(case="upper", word_len=(3, 6), fonts=("DejaVuSansMono-Bold",), background="plain",
                      region_mix={"1": 1.0}, cap_px=(20, 20), layout="cells", cell_px=16,
                      templates=("the text {words} in {fg} on a {bg} background",))
    g = SynthGenerator(cfg, "train", seed=3)
    for i in range(6):
        s = g.sample(i)
        (word,) = s.words
        assert s.prompt.startswith(f'the text "{word}" in ')  # the word always starts at character 10
        bg = s.image[0, 0].astype(int)
        ink = np.abs(s.image.astype(int) - bg).sum(-1) > 60
        cols = np.flatnonzero(ink.any(0))
        # Ink starts in cell 1 and ends in the word's last cell; nothing outside the word's cells.
        assert 16 <= cols.min() < 32 and 16 * len(word) <= cols.max() < 16 * (len(word) + 1)
        for j in range(len(word)):
            assert ink[:, 16 * (j + 1): 16 * (j + 2)].any(), f"no ink in cell {j} of {word!r}"
        x0, y0, x1, y1 = s.boxes[0]
        assert abs(x0 - cols.min()) <= 3 and abs(x1 - 1 - cols.max()) <= 3 and y1 - y0 >= 12  # faint anti-aliased edges


def test_cells_and_template_validation():
    with pytest.raises(ValueError, match="no room"):
        SynthConfig(layout="cells", cell_px=40, word_len=(3, 6))
    with pytest.raises(ValueError, match="no {words}"):
        SynthConfig(templates=("just a {fg} picture",))
    with pytest.raises(ValueError, match="templates is empty"):
        SynthConfig(templates=())
