"""Region-count data tools: bins, exact largest-remainder mixes, filters, and `varrl data`."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from varrl.cli import main
from varrl.data.prompts import JsonlPrompts, PromptFileError
from varrl.data.regions import (
    RegionMixError,
    filter_bins,
    format_histogram,
    histogram,
    largest_remainder,
    parse_bins,
    parse_target,
    read_records,
    region_bin,
    region_count,
    sample_mix,
)

MIX = {"2": 0.2, "3": 0.3, "4": 0.3, "5": 0.2}


def _prompt(n: int, i: int) -> dict:
    return {"prompt": "a sign " + " and ".join(f"'W{i}x{k}'" for k in range(n)), "id": f"{n}-{i}"}


def _pool(counts: dict[int, int]) -> list[dict]:
    return [_prompt(n, i) for n, k in counts.items() for i in range(k)]


def test_region_count_and_bins():
    assert region_count({"prompt": "'A' and 'B C' on \"D\""}) == 3  # spans, not words; any quote style
    assert region_count({"prompt": "no text", "regions": 7}) == 7  # the field wins
    assert region_count({"prompt": "nothing quoted"}) == 0
    assert [region_bin(n) for n in (0, 1, 5, 6, 40)] == ["0", "1", "5", ">5", ">5"]
    with pytest.raises(PromptFileError, match="non-negative integer"):
        region_count({"prompt": "x", "regions": "3"})


def test_largest_remainder_by_hand():
    assert largest_remainder(10, MIX) == {"2": 2, "3": 3, "4": 3, "5": 2}
    assert largest_remainder(2000, MIX) == {"2": 400, "3": 600, "4": 600, "5": 400}
    # n=7: quotas 1.4, 2.1, 2.1, 1.4 -> floors 1, 2, 2, 1 (6); the one left goes to the largest
    # remainder, 0.4, tied between bins 2 and 5: the bin listed first takes it
    assert largest_remainder(7, MIX) == {"2": 2, "3": 2, "4": 2, "5": 1}
    # n=3 in thirds: exactly one each
    assert largest_remainder(3, {"1": 1 / 3, "2": 1 / 3, ">5": 1 / 3}) == {"1": 1, "2": 1, ">5": 1}
    # n=5 at 0.55/0.45: quotas 2.75, 2.25 -> 2 + 2, the remainder 0.75 wins
    assert largest_remainder(5, {"2": 0.55, "3": 0.45}) == {"2": 3, "3": 2}


def test_parse_target_and_bins():
    assert parse_target("2:0.2,3:0.3,4:0.3,5:0.2") == pytest.approx(MIX)
    assert parse_target("2:1, >5:3") == {"2": 0.25, ">5": 0.75}  # weights are normalised
    assert parse_bins("2, 3,>5") == ["2", "3", ">5"]
    for bad, msg in [("7:1", "unknown region bin '7'"), ("2=1", "expected BIN:WEIGHT"), ("2:x", "bad weight"),
                     ("2:-1", ">= 0"), ("2:0", "positive total"), ("2:1,2:1", "twice")]:
        with pytest.raises(RegionMixError, match=msg):
            parse_target(bad)
    with pytest.raises(RegionMixError, match="unknown region bin '9'"):
        parse_bins("2,9")


def test_sample_mix_exact_without_replacement_and_seeded():
    pool = _pool({1: 30, 2: 30, 3: 30, 4: 30, 5: 30, 6: 5})
    got = sample_mix(pool, MIX, 50, seed=1)
    assert Counter(region_bin(region_count(r)) for r in got) == {"2": 10, "3": 15, "4": 15, "5": 10}
    assert len({r["id"] for r in got}) == 50  # no record twice
    assert got == sample_mix(pool, MIX, 50, seed=1)
    assert got != sample_mix(pool, MIX, 50, seed=2)
    # shuffled across bins, not sorted by bin
    assert [region_count(r) for r in got] != sorted(region_count(r) for r in got)


def test_sample_mix_too_few_names_the_bin():
    pool = _pool({2: 100, 3: 100, 4: 100, 5: 30})
    with pytest.raises(RegionMixError) as e:
        sample_mix(pool, MIX, 200, seed=0)
    # bin 5 needs 0.2 * 200 = 40 but has 30. The largest n that fits: at n=153 the quotas are
    # 30.6/45.9/45.9/30.6, floors 30/45/45/30 (150); the 3 left go to bins 3 and 4 (.9) and, of the
    # tied .6, to bin 2 listed first: bin 5 keeps 30. At n=154 (30.8/46.2/46.2/30.8, floors 152)
    # the 2 left go to bins 2 and 5 (.8): 31 > 30.
    msg = str(e.value)
    assert "bin 5 needs 40 prompts" in msg and "only 30" in msg
    assert "largest --n this mix allows is 153" in msg
    assert largest_remainder(153, MIX)["5"] == 30 and largest_remainder(154, MIX)["5"] == 31


def test_filter_bins_keeps_file_order():
    pool = _pool({1: 2, 2: 2, 3: 2, 7: 1})
    got = filter_bins(pool, ["3", ">5"])
    assert [r["id"] for r in got] == ["3-0", "3-1", "7-0"]


def test_histogram_and_format():
    counts = histogram(_pool({1: 1, 2: 3, 6: 1}) + [{"prompt": "no text"}])
    assert counts == {"0": 1, "1": 1, "2": 3, "3": 0, "4": 0, "5": 0, ">5": 1}
    text = format_histogram(counts)
    assert "       2        3   50.0%" in text and "   total        6" in text
    assert "0 (" not in text and format_histogram({**counts, "0": 0}).count("\n") == 7  # header + 6 bins + total


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_data_cli_stats_sample_filter(tmp_path, capsys):
    src = _jsonl(tmp_path / "p.jsonl", _pool({1: 10, 2: 10, 3: 10, 4: 10, 5: 10}))
    assert main(["data", "stats", str(src)]) == 0
    assert "       3       10   20.0%" in capsys.readouterr().out

    out = tmp_path / "mix.jsonl"
    assert main(["data", "sample", str(src), "--target", "2:0.2,3:0.3,4:0.3,5:0.2", "--n", "20", "--seed", "4",
                 "--out", str(out)]) == 0
    assert "wrote 20 of 50 prompts" in capsys.readouterr().out
    drawn = read_records(out)
    assert Counter(region_count(r) for r in drawn) == {2: 4, 3: 6, 4: 6, 5: 4}
    # the trainer's reader takes the file (data.prompts_file), words from the quoted spans
    prompts = JsonlPrompts(out)
    assert len(prompts) == 20 and prompts[0].meta["id"] == drawn[0]["id"]
    assert len(prompts[0].words) == region_count(drawn[0])

    kept = tmp_path / "kept.jsonl"
    assert main(["data", "filter", str(src), "--bins", "1,5", "--out", str(kept)]) == 0
    assert sorted({region_count(r) for r in read_records(kept)}) == [1, 5] and len(read_records(kept)) == 20

    assert main(["data", "sample", str(src), "--target", "5:1", "--n", "11", "--out", str(out)]) == 2
    assert "bin 5 needs 11 prompts" in capsys.readouterr().err


def test_data_cli_reads_a_cvtg_root_and_rejects_bad_files(tmp_path, capsys):
    from varrl.recipes.evaluate import shipped_cvtg_root

    assert main(["data", "stats", str(shipped_cvtg_root())]) == 0
    out = capsys.readouterr().out
    assert "       5       48   25.0%" in out and "   total      192" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    assert main(["data", "stats", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
