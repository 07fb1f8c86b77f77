"""IEMOCAP parser: ids, label files, sub-folders, side rule, exc merge, counts (spec §4)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from foalnet.data.iemocap import (EXPECTED_COUNTS, FULL_RELEASE_UTTERANCES, Utterance,
                                  build_iemocap, check_expected_counts, parse_label_file,
                                  parse_release, parse_utterance_id)
from foalnet.data.manifest import MANIFEST_FIELDS, read_manifest, read_prepare_meta

LABEL_FILE = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes01F_script01_1_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
A-E3:\tval 3; act 2; dom  2;\t()

[10.0100 - 11.3925]\tSes01F_script01_1_M000\texc\t[3.5000, 3.5000, 3.0000]
C-E2:\tExcited;\t()

[12.5 - oops]\tSes01F_script01_1_M001\tang\t[1, 4, 4]

[13.0000 - 14.5000]\tSes01F_script01_1_M002\tfru\t[2.0000, 3.5000, 3.5000]
"""


def test_parse_utterance_id_impro_and_scripted():
    assert parse_utterance_id("Ses01F_impro01_M000") == {
        "session": 1, "dialog": "Ses01F_impro01", "gender": "M", "speaker": "Ses01M",
        "side": "right"}
    scripted = parse_utterance_id("Ses03M_script01_1_M021")
    assert scripted == {"session": 3, "dialog": "Ses03M_script01_1", "gender": "M",
                        "speaker": "Ses03M", "side": "left"}
    # sub-dialog letters of the real release keep everything before the last field
    assert parse_utterance_id("Ses05F_impro05b_F010")["dialog"] == "Ses05F_impro05b"
    for bad in ("Ses06F_impro01_F000", "Ses01F_impro01", "Ses01X_impro01_F000"):
        with pytest.raises(ValueError, match="not an IEMOCAP utterance id"):
            parse_utterance_id(bad)


def test_parse_label_file_skips_headers_and_annotators(tmp_path: Path):
    path = tmp_path / "Ses01F_script01_1.txt"
    path.write_text(LABEL_FILE)
    utts, rejections = parse_label_file(path)
    assert [u.id for u in utts] == ["Ses01F_script01_1_F000", "Ses01F_script01_1_M000",
                                    "Ses01F_script01_1_M002"]
    first = utts[0]
    assert (first.start, first.end, first.code, first.vad) == (6.2901, 8.2357, "neu", (2.5, 2.5, 2.5))
    assert (first.side, utts[1].side) == ("left", "right")
    assert len(rejections) == 1 and rejections[0].reason == "malformed summary line"
    assert rejections[0].id == "Ses01F_script01_1.txt:10"


def test_release_ignores_subfolders_and_dotfiles(synth_root: Path):
    utts, rejections = parse_release(synth_root)
    # the synthetic release has Categorical/ and Attribute/ decoys (code 'zzz') in each session
    assert list((synth_root / "Session1/dialog/EmoEvaluation").glob("*/*.txt"))
    assert rejections == []
    summary = json.loads((synth_root / "foalnet_synth.json").read_text())
    assert len(utts) == summary["utterances"]
    assert {u.code for u in utts} == set(summary["codes"])


def test_manifest_exc_merge_side_rule_and_fields(prepared_dir: Path, synth_root: Path):
    records = read_manifest(prepared_dir)
    summary = json.loads((synth_root / "foalnet_synth.json").read_text())
    codes = summary["codes"]
    counts = Counter(r["label"] for r in records)
    assert counts == {"neu": codes["neu"], "hap": codes["hap"] + codes["exc"],
                      "sad": codes["sad"], "ang": codes["ang"]}
    assert set(records[0]) == set(MANIFEST_FIELDS)
    for r in records:
        assert r["side"] == ("left" if r["id"].rsplit("_", 1)[1][0] == r["id"][5] else "right")
        assert r["session"] == int(r["id"][4]) == r["fold"]
        assert r["speaker"] == r["id"][:5] + r["gender"]
        assert Path(r["wav"]).is_file() and Path(r["video"]).name == r["dialog"] + ".avi"
        assert 0 <= r["start"] < r["end"]
    assert {r["side"] for r in records} == {"left", "right"}
    meta = read_prepare_meta(prepared_dir)
    assert meta["labels"] == ["neu", "hap", "sad", "ang"] and meta["folds"] == [1, 2, 3, 4, 5]
    assert meta["counts"]["total"] == len(records)


def test_no_exc_class_set_drops_exc(synth_root: Path):
    merged = build_iemocap(synth_root, "4")
    no_exc = build_iemocap(synth_root, "4-no-exc")
    summary = json.loads((synth_root / "foalnet_synth.json").read_text())
    assert len(merged.records) - len(no_exc.records) == summary["codes"]["exc"]
    exc_ids = {r["id"] for r in merged.records} - {r["id"] for r in no_exc.records}
    assert all(r["label"] == "hap" for r in merged.records if r["id"] in exc_ids)


def _fake_labelled(label_counts: dict, session_counts: dict) -> list:
    labels = [lab for lab, n in label_counts.items() for _ in range(n)]
    sessions = [s for s, n in session_counts.items() for _ in range(n)]
    return [(Utterance(f"u{i}", lab, 0.0, 1.0, (), s, "d", "F", "Ses01F", "left", "f"), lab)
            for i, (lab, s) in enumerate(zip(labels, sessions))]


@pytest.mark.parametrize("classes", ["4", "4-no-exc"])
def test_expected_counts_are_enforced_on_the_full_release(classes: str):
    want = EXPECTED_COUNTS[classes]
    good = _fake_labelled(want["labels"], want["sessions"])
    check_expected_counts(good, classes, FULL_RELEASE_UTTERANCES)  # does not raise
    with pytest.raises(ValueError, match="counts .* are off"):
        check_expected_counts(good[1:], classes, FULL_RELEASE_UTTERANCES)
    check_expected_counts(good[1:], classes, 250)  # not the full release: no check


def test_spec_counts_are_self_consistent():
    for want in EXPECTED_COUNTS.values():
        assert sum(want["labels"].values()) == sum(want["sessions"].values())
    assert sum(EXPECTED_COUNTS["4"]["labels"].values()) == 5531
    assert sum(EXPECTED_COUNTS["4-no-exc"]["labels"].values()) == 4490


@pytest.mark.corpus
@pytest.mark.parametrize("classes,total", [("4", 5531), ("4-no-exc", 4490)])
def test_real_corpus_counts(iemocap_root: Path, classes: str, total: int):
    prepared = build_iemocap(iemocap_root, classes)
    assert prepared.rejections == []
    assert len(prepared.records) == total
    assert dict(Counter(r["label"] for r in prepared.records)) == EXPECTED_COUNTS[classes]["labels"]
    assert dict(Counter(r["session"] for r in prepared.records)) == EXPECTED_COUNTS[classes]["sessions"]
    assert len({r["speaker"] for r in prepared.records}) == 10
