from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from varrl.rewards import (
    REWARDS,
    BrightnessConfig,
    BrightnessReward,
    CombinedReward,
    Pending,
    Reward,
    RewardConfig,
    RewardResult,
    TextOcrConfig,
    TextOcrReward,
    build_reward,
    text_ocr_terms,
)
from varrl.rewards.text_ocr import bag_distance, ld, target_words


def _terms_close(got: dict[str, float], **want: float) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-7), (k, got[k], v)


# ---- text_ocr_terms, worked by hand ------------------------------------------------------------


def test_perfect_read():
    # "open" read as "OPEN" at 0.9: Comp = 0.9, Sim = LD 1 * 0.9 = 0.9, bags equal -> Pen 0; 0.9 + 0.9 = 1.8
    t = text_ocr_terms(["open"], [("OPEN", 0.9)])
    _terms_close(t, comp=0.9, sim=0.9, pen=0.0, reward=1.8, word_acc=1.0, ned=1.0)


def test_missing_word():
    # targets cat, dog; only "cat" read at 0.9.
    # Comp = (0.9 + 0) / 2 = 0.45
    # Sim: cat -> LD 1 * 0.9; dog -> closest read "cat", Lev 3 over 3 -> LD 0; (0.9 + 0) / 2 = 0.45
    # Pen: bag("cat") vs bag("catdog") differ by d, o, g = 3; 0.6 * 3 / (3 + 6) = 0.2
    # reward = 0.45 + 0.45 - 0.2 = 0.7
    t = text_ocr_terms(["cat", "dog"], [("cat", 0.9)])
    _terms_close(t, comp=0.45, sim=0.45, pen=0.2, reward=0.7, word_acc=0.5, ned=0.5)


def test_duplicated_word():
    # "cat" read twice, at 0.8 and 0.6.
    # Comp takes the weakest exact read: 0.6
    # Sim: both reads have LD 1, the tie goes to the higher confidence: 1 * 0.8
    # Pen: the duplicate shows up in the bags: "catcat" vs "cat" differ by c, a, t = 3; 0.6 * 3 / (6 + 3) = 0.2
    # reward = 0.6 + 0.8 - 0.2 = 1.2
    t = text_ocr_terms(["cat"], [("cat", 0.8), ("cat", 0.6)])
    _terms_close(t, comp=0.6, sim=0.8, pen=0.2, reward=1.2, word_acc=1.0, ned=1.0)


def test_misspelling():
    # "open" read as "opan" at 0.5: no exact read -> Comp 0
    # LD = 1 - 1 substitution / 4 = 0.75 -> Sim = 0.75 * 0.5 = 0.375
    # Pen: bags {o,p,a,n} vs {o,p,e,n} differ by a and e = 2; 0.6 * 2 / (4 + 4) = 0.15
    # reward = 0 + 0.375 - 0.15 = 0.225
    t = text_ocr_terms(["open"], [("opan", 0.5)])
    _terms_close(t, comp=0.0, sim=0.375, pen=0.15, reward=0.225, word_acc=0.0, ned=0.75)


def test_extra_junk_text():
    # "open" read at 1.0 plus junk "xyz" at 0.7.
    # Comp = 1; Sim: "open" has LD 1 (vs 0 for "xyz") -> 1 * 1 = 1
    # Pen: "openxyz" vs "open" differ by x, y, z = 3; 0.6 * 3 / (7 + 4) = 1.8 / 11 = 0.163636...
    # reward = 2 - 1.8 / 11 = 1.836363...
    t = text_ocr_terms(["open"], [("open", 1.0), ("xyz", 0.7)])
    _terms_close(t, comp=1.0, sim=1.0, pen=1.8 / 11, reward=2 - 1.8 / 11, word_acc=1.0, ned=1.0)


def test_no_text_read():
    # nothing read: Comp 0, Sim 0, Pen = 0.6 * |"open"| / (0 + |"open"|) = 0.6 -> reward -0.6
    t = text_ocr_terms(["open"], [])
    _terms_close(t, comp=0.0, sim=0.0, pen=0.6, reward=-0.6, word_acc=0.0, ned=0.0)
    _terms_close(text_ocr_terms(["open"], [], lam=1.0), pen=1.0, reward=-1.0)


def test_sim_tie_goes_to_higher_confidence():
    # "cut" and "cot" are both 1 substitution from "cat": LD 2/3 each; the 0.9 read wins -> Sim = 2/3 * 0.9 = 0.6
    t = text_ocr_terms(["cat"], [("cut", 0.3), ("cot", 0.9)])
    _terms_close(t, sim=0.6)
    # the closest read wins even at lower confidence: "cat" (LD 1, 0.2) over "cot" (LD 2/3, 0.9)
    _terms_close(text_ocr_terms(["cat"], [("cot", 0.9), ("cat", 0.2)]), sim=0.2, comp=0.2)


def test_no_targets_is_nan():
    t = text_ocr_terms([], [("open", 0.9)])
    assert set(t) == {"comp", "sim", "pen", "reward", "word_acc", "ned"}
    assert all(math.isnan(v) for v in t.values())
    assert all(math.isnan(v) for v in text_ocr_terms(["  "], []).values())


def test_targets_split_and_lowercased():
    # "Hello World" is two targets; the reads match case-insensitively
    t = text_ocr_terms(["Hello World"], [("HELLO", 1.0), ("world", 1.0)])
    _terms_close(t, comp=1.0, sim=1.0, pen=0.0, reward=2.0, word_acc=1.0)


def test_helpers():
    assert ld("open", "open") == 1.0
    assert ld("open", "opan") == pytest.approx(0.75)
    assert ld("", "") == 1.0
    assert bag_distance("aab", "abc") == 2  # one extra a, one missing c
    assert bag_distance("", "xyz") == 3
    assert target_words('say "Hello World"', {}) == ["hello", "world"]
    assert target_words('say "Hello"', {"words": ["OPEN", "Exit now"]}) == ["open", "exit", "now"]
    assert target_words('say "Hello"', {"words": "Cafe"}) == ["cafe"]
    assert target_words("no quotes", {"words": None}) == []


# ---- RewardResult, Pending, CombinedReward ------------------------------------------------------


def _images(B: int, value: int = 0) -> np.ndarray:
    return np.full((B, 8, 8, 3), value, dtype=np.uint8)


class _Fixed(Reward):
    """Returns given scores; logs submit/result order so the tests can see concurrency."""

    def __init__(self, name, scores, boxes=None, components=None, texts=None, log=None):
        self.name, self.scores, self.boxes, self.texts = name, scores, boxes, texts
        self.components = components or {}
        self.log = log if log is not None else []
        self.closed = False

    def __call__(self, images_BHW3, prompts, meta):
        return RewardResult(np.array(self.scores, dtype=np.float64), self.boxes, dict(self.components), self.texts)

    def submit(self, images_BHW3, prompts, meta):
        self.log.append(f"submit {self.name}")

        def finish():
            self.log.append(f"result {self.name}")
            return self(images_BHW3, prompts, meta)

        return Pending(finish)

    def close(self):
        self.closed = True


def test_reward_result_validation():
    r = RewardResult([1, 2])
    assert r.scores.dtype == np.float64 and len(r) == 2 and r.boxes is None and r.texts is None
    with pytest.raises(ValueError, match="1-D"):
        RewardResult(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="boxes has 1 entries for 2 images"):
        RewardResult(np.zeros(2), boxes=[[]])
    with pytest.raises(ValueError, match="4 coordinates"):
        RewardResult(np.zeros(1), boxes=[[(0, 0, 1)]])
    with pytest.raises(ValueError, match="component 'x'"):
        RewardResult(np.zeros(2), components={"x": np.zeros(3)})
    with pytest.raises(ValueError, match="texts has 3 entries"):
        RewardResult(np.zeros(2), texts=[[], [], []])


def test_pending():
    ready = RewardResult(np.ones(2))
    assert Pending(ready).result() is ready
    calls = []
    p = Pending(lambda: calls.append(1) or ready)
    assert p.result() is ready and p.result() is ready and calls == [1]  # finished once
    with pytest.raises(TypeError):
        Pending(3)
    with pytest.raises(TypeError, match="not a RewardResult"):
        Pending(lambda: 3).result()


def test_input_validation():
    b = BrightnessReward()
    with pytest.raises(ValueError, match="uint8"):
        b(np.zeros((2, 8, 8, 3), dtype=np.float32), ["", ""], [{}, {}])
    with pytest.raises(ValueError, match="uint8"):
        b(np.zeros((8, 8, 3), dtype=np.uint8), [""], [{}])
    with pytest.raises(ValueError, match="1 prompts for 2 images"):
        b(_images(2), [""], [{}, {}])
    with pytest.raises(ValueError, match="3 meta dicts for 2 images"):
        b(_images(2), ["", ""], [{}, {}, {}])
    with pytest.raises(ValueError, match="not dicts"):
        b(_images(2), ["", ""], [{}, "x"])
    with pytest.raises(NotImplementedError):
        Reward()(_images(1), [""], [{}])


def test_brightness():
    images = np.stack([_images(1, 0)[0], _images(1, 255)[0], _images(1, 51)[0]])
    res = BrightnessReward(BrightnessConfig(target=0.5))(images, [""] * 3, [{}] * 3)
    # means 0, 1, 0.2 -> -|m - 0.5| = -0.5, -0.5, -0.3
    np.testing.assert_allclose(res.scores, [-0.5, -0.5, -0.3])
    np.testing.assert_allclose(res.components["mean"], [0.0, 1.0, 0.2])
    assert res.boxes is None
    assert BrightnessReward().submit(images, [""] * 3, [{}] * 3).result().scores.shape == (3,)


def test_combined_weights_nan_and_components():
    nan = math.nan
    log: list[str] = []
    a = _Fixed("a", [1.0, nan, nan, 2.0], boxes=[[(0, 0, 1, 1)], [], [], [(1, 1, 2, 2)]],
               components={"c": np.array([5.0, 6, 7, 8])}, texts=[["x"], [], [], ["y"]], log=log)
    b = _Fixed("b", [0.5, 3.0, nan, -1.0], log=log)
    c = _Fixed("c", [0.0, 0.0, nan, 0.0], boxes=[[(2, 2, 3, 3)], [], [], []], log=log)
    combined = CombinedReward([(a, 2.0), (b, 10.0), (c, 1.0)])
    pending = combined.submit(_images(4), [""] * 4, [{}] * 4)
    assert log == ["submit a", "submit b", "submit c"]  # all submitted before any is waited on
    res = pending.result()
    assert log[3:] == ["result a", "result b", "result c"]
    # image 0: 2*1 + 10*0.5 + 0 = 7; image 1: a is NaN, skipped -> 10*3 = 30; image 2: all NaN -> NaN
    # image 3: 2*2 + 10*(-1) + 0 = -6
    np.testing.assert_allclose(res.scores, [7.0, 30.0, nan, -6.0])
    assert set(res.components) == {"a", "a/c", "b", "c"}
    np.testing.assert_allclose(res.components["a"], [1.0, nan, nan, 2.0])  # raw, not weighted
    np.testing.assert_allclose(res.components["a/c"], [5, 6, 7, 8])
    assert res.boxes == [[(0, 0, 1, 1), (2, 2, 3, 3)], [], [], [(1, 1, 2, 2)]]
    assert res.texts == [["x"], [], [], ["y"]]
    assert combined.name == "combined"
    combined.close()
    assert a.closed and b.closed and c.closed


def test_combined_without_boxes_and_errors():
    res = CombinedReward([(_Fixed("b", [1.0, 2.0]), 0.5)])(_images(2), ["", ""], [{}, {}])
    np.testing.assert_allclose(res.scores, [0.5, 1.0])
    assert res.boxes is None and res.texts is None
    with pytest.raises(ValueError, match="at least one"):
        CombinedReward([])
    with pytest.raises(ValueError, match="unique"):
        CombinedReward([(_Fixed("a", [1.0]), 1.0), (_Fixed("a", [1.0]), 1.0)])
    with pytest.raises(ValueError, match="returned 3 scores for 2 images"):
        CombinedReward([(_Fixed("a", [1.0, 2, 3]), 1.0)])(_images(2), ["", ""], [{}, {}])


def test_build_reward():
    r = build_reward(RewardConfig(weights={"brightness": 1.0}))
    assert isinstance(r, CombinedReward) and r.name == "combined"
    res = r(_images(2, 255), ["", ""], [{}, {}])
    np.testing.assert_allclose(res.scores, [-0.5, -0.5])
    assert set(res.components) == {"brightness", "brightness/mean"}
    default = build_reward(RewardConfig())
    assert [(x.name, w) for x, w in default.rewards] == [("text_ocr", 1.0)]
    assert default.rewards[0][0]._pool is None  # OCR workers start on first use, not at build time
    names = r"\['brightness', 'classifier', 'clip_score', 'hpsv3', 'jpeg', 'text_ocr'\]"
    with pytest.raises(ValueError, match=f"valid names: {names}"):
        build_reward(RewardConfig(weights={"clip": 1.0}))
    with pytest.raises(ValueError, match="empty"):
        build_reward(RewardConfig(weights={}))
    assert set(REWARDS) == {"text_ocr", "brightness", "clip_score", "hpsv3", "jpeg", "classifier"}


# ---- TextOcrReward through the real OCR engine ---------------------------------------------------


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_text_ocr_reward_end_to_end():
    from varrl.data.synth import SynthConfig, SynthGenerator

    cfg = SynthConfig(case="upper", word_len=(3, 7), fonts=("DejaVuSans-Bold",), background="plain",
                      region_mix={"1": 1.0}, cap_px=(18, 24))
    samples = [SynthGenerator(cfg, "train", seed=0).sample(i) for i in range(4)]
    white_HW3 = np.full((128, 128, 3), 255, dtype=np.uint8)
    # 4 renderings, a blank image asked for "open", and a prompt with no quoted text (-> NaN, no OCR)
    images = np.stack([s.image for s in samples] + [white_HW3, white_HW3])
    prompts = [s.prompt for s in samples] + ['a sign that says "OPEN"', "a white wall"]
    meta = [{"words": s.words} if i % 2 else {} for i, s in enumerate(samples)] + [{}, {}]  # both target paths
    with TextOcrReward(TextOcrConfig(workers=1)) as reward:
        assert reward._pool is None
        res = reward.submit(images, prompts, meta).result()
    assert reward._pool is None  # closed

    scores = res.scores
    assert (scores[:4] > 1.0).sum() >= 3, scores
    assert res.components["word_acc"][:4].mean() >= 0.75, res.texts
    assert scores[4] == pytest.approx(-0.6)  # nothing read: Comp 0, Sim 0, Pen = lam
    assert math.isnan(scores[5]) and res.texts[5] == [] and res.boxes[5] == []
    assert set(res.components) == {"comp", "sim", "pen", "word_acc", "ned"}
    np.testing.assert_allclose(res.components["comp"] + res.components["sim"] - res.components["pen"], scores)
    hits = 0
    for s, boxes in zip(samples, res.boxes[:4]):
        hits += all(max((_iou(t, b) for b in boxes), default=0.0) > 0.3 for t in s.boxes)
    assert hits >= 3, (res.boxes, [s.boxes for s in samples])
    # Per-word scores: the image's Comp + Sim is their mean; a word read well has its box on the rendered word.
    for i, s in enumerate(samples):
        words = res.words[i]
        assert [w.word for w in words] == [w.lower() for w in s.words]
        assert np.mean([w.score for w in words]) == pytest.approx(res.components["comp"][i] + res.components["sim"][i])
    placed = [max((_iou(t, b) for b in w.boxes), default=0.0) > 0.3 for s, ws in zip(samples, res.words[:4])
              for t, w in zip(s.boxes, ws) if w.score > 1.0]
    assert len(placed) >= 3 and all(placed), res.words
    assert [w.boxes for w in res.words[4]] == [[]] and res.words[5] == []  # nothing read; no target words
    # Letters: one per letter of each word; a word read exactly has each letter's box inside the
    # word's rendered box, left to right, scored by the OCR's confidence in that character.
    exact = 0
    for s, ws, texts in zip(samples, res.words[:4], res.texts[:4]):
        for t, w in zip(s.boxes, ws):
            assert "".join(c.word for c in w.letters) == w.word
            if w.word not in [x.lower() for x in texts]:
                continue
            exact += 1
            x0s = [c.boxes[0][0] for c in w.letters]
            assert x0s == sorted(x0s) and all(0.5 < c.score <= 1.0 for c in w.letters), w
            assert all(_iou(t, c.boxes[0]) > 0 and t[0] - 4 <= c.boxes[0][0] and c.boxes[0][2] <= t[2] + 4
                       for c in w.letters), (t, w)
    assert exact >= 3, res.texts
    assert [[c.score for c in w.letters] for w in res.words[4]] == [[0.0] * 4]


def test_dead_ocr_worker_is_an_error_not_a_hang(tmp_path):
    # A script that starts OCR workers at module level, without a __main__ guard: each spawned
    # worker re-imports it, tries to start workers of its own while bootstrapping and dies. The
    # parent must say so and exit, not wait for the results forever.
    script = tmp_path / "unguarded.py"
    script.write_text("import numpy as np\nfrom varrl.ocr import OcrPool\n"
                      "OcrPool(workers=1).read([np.zeros((32, 32, 3), np.uint8)])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0
    assert "OcrWorkerError" in out.stderr and 'if __name__ == "__main__":' in out.stderr, out.stderr[-2000:]


def test_character_boxes_leave_the_reads_alone():
    # OcrEngine asks RapidOCR for per-character boxes; the words and their confidences must be
    # what the same engine reads without them (the characters come from the same recogniser pass).
    from rapidocr import RapidOCR

    from varrl.data.synth import SynthConfig, SynthGenerator
    from varrl.ocr import OcrEngine

    cfg = SynthConfig(case="upper", word_len=(3, 7), fonts=("DejaVuSans-Bold",), background="plain",
                      region_mix={"1": 0.5, "2": 0.5}, cap_px=(16, 24))
    images = [SynthGenerator(cfg, "train", seed=1).sample(i).image for i in range(6)]
    ours = OcrEngine()
    c = ours.config
    plain = RapidOCR(params={"Global.log_level": "error", "Global.text_score": c.min_score, "Global.use_cls": c.use_cls,
                             "Det.limit_side_len": c.det_side, "Det.limit_type": "min",
                             "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                             "EngineConfig.onnxruntime.inter_op_num_threads": 1})
    n_chars = 0
    for img in images:
        words = ours(img)
        out = plain(np.ascontiguousarray(img[:, :, ::-1]))
        lines = [] if out is None or out.txts is None else list(zip(out.txts, out.scores))
        assert " ".join(w.text for w in words) == " ".join(t for t, _ in lines)
        assert sorted({w.score for w in words}) == sorted({float(s) for _, s in lines})
        n_chars += sum(len(w.chars) for w in words)
        assert all(len(w.chars) in (0, len(w.text)) for w in words)
    assert n_chars > 0  # the characters did come
