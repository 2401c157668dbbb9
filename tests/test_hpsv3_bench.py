"""HPSv3 benchmark adapter: prompt folders, mean of category means by hand, the Table 2 layout."""

from __future__ import annotations

import json

import pytest

from varrl.eval.cvtg import BenchmarkError
from varrl.eval.hpsv3_bench import (
    CATEGORIES,
    category_of,
    limit_per_category,
    markdown_table,
    read_hpsv3_prompts,
    summarize,
)


def write_bench(root) -> None:
    (root / "Arts").mkdir(parents=True)
    (root / "Arts" / "prompts.txt").write_text("an oil painting of a harbour\n\n  a watercolour fox  \n")
    (root / "Natural_Scenery").mkdir()
    (root / "Natural_Scenery" / "b7.txt").write_text("a misty valley at dawn\n")
    (root / "Natural_Scenery" / "a1.txt").write_text("a glacier")
    (root / "food").mkdir()
    (root / "food" / "prompts.jsonl").write_text(json.dumps({"prompt": "a bowl of ramen", "id": "r1"}) + "\n\n"
                                                 + json.dumps({"prompt": "a croissant"}) + "\n")


def test_reads_every_prompt_layout(tmp_path):
    write_bench(tmp_path)
    got = [(p.category, p.folder, p.key, p.prompt) for p in read_hpsv3_prompts(tmp_path)]
    assert got == [  # CATEGORIES order: Arts, Natural Scenery, Food
        ("Arts", "Arts", "00000", "an oil painting of a harbour"),
        ("Arts", "Arts", "00001", "a watercolour fox"),
        ("Natural Scenery", "Natural_Scenery", "a1", "a glacier"),
        ("Natural Scenery", "Natural_Scenery", "b7", "a misty valley at dawn"),
        ("Food", "food", "r1", "a bowl of ramen"),
        ("Food", "food", "00001", "a croissant"),
    ]
    assert [p.key for p in limit_per_category(read_hpsv3_prompts(tmp_path), 1)] == ["00000", "a1", "r1"]
    assert category_of("natural-scenery") == "Natural Scenery" and category_of("Cars") is None


def test_bad_roots_are_named(tmp_path):
    with pytest.raises(BenchmarkError, match="not found"):
        read_hpsv3_prompts(tmp_path / "nope")
    with pytest.raises(BenchmarkError, match="no prompts"):
        read_hpsv3_prompts(tmp_path)
    (tmp_path / "Misc").mkdir()
    with pytest.raises(BenchmarkError, match="Misc: not an HPSv3 category"):
        read_hpsv3_prompts(tmp_path)
    (tmp_path / "Misc").rmdir()
    (tmp_path / "Food").mkdir()
    (tmp_path / "Food" / "prompts.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(BenchmarkError, match="line 1"):
        read_hpsv3_prompts(tmp_path)


def test_overall_is_the_mean_of_category_means():
    m = summarize(["Arts", "Arts", "Arts", "Food"], [1.0, 2.0, 3.0, 10.0])
    assert m["overall"] == pytest.approx(6.0)  # (2 + 10) / 2, not the pooled mean 4
    assert m["by_category"]["Arts"] == {"count": 3, "mean": 2.0, "std": pytest.approx((2 / 3) ** 0.5)}
    assert list(m["by_category"]) == ["Arts", "Food"]
    assert summarize([], [])["overall"] is None


def test_table_has_the_paper_columns():
    table = markdown_table(summarize(["Food", "Arts"], [10.0, 8.437]), "varrl nano")
    head, rule, row = table.strip().split("\n")
    assert head == "| Model | Overall | " + " | ".join(CATEGORIES) + " |"
    assert rule.count("---") == 14
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["varrl nano", "9.22", "-"]  # Overall, Characters (absent)
    assert cells[2 + CATEGORIES.index("Arts")] == "8.44" and cells[2 + CATEGORIES.index("Food")] == "10.00"
