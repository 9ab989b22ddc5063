"""Clean stage: normalisation, PII, filters, config and the run_clean contract (fast unit tests)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneforge.clean import CleanConfig, run_clean
from tuneforge.clean.config import NormalizeConfig, PIIConfig
from tuneforge.clean.filters import language_of, repeat_ratio
from tuneforge.clean.normalize import normalize_text, strip_html
from tuneforge.clean.pii import scrub
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import dumps
from tuneforge.common.records import new_record, provenance


def conv(user: str, answer: str, i: int = 0, source: str = "t") -> dict:
    return new_record("messages", provenance(source, "f.json", None, i),
                      messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}])


def only(**clean) -> CleanConfig:
    """A config with dedup and PII off, so one feature can be tested alone."""
    base = {"dedup": {"exact": False, "near": False}, "pii": None}
    base.update(clean)
    return CleanConfig.model_validate(base)


# --- normalisation -------------------------------------------------------------------------------------------

def test_fullwidth_keeps_chinese_punctuation_and_folds_latin():
    cfg = NormalizeConfig()
    assert normalize_text("价格：１２３元（含税），好吗？", cfg) == "价格：123元（含税），好吗？"
    assert normalize_text("Ｈｅｌｌｏ，ｗｏｒｌｄ！！", cfg) == "Hello,world!!"
    assert normalize_text("你好！！", cfg) == "你好！！"
    assert normalize_text("He said（hello）", cfg) == "He said(hello)"


def test_fullwidth_brackets_fold_as_a_pair():
    cfg = NormalizeConfig()
    # The closing bracket has only a digit beside it, but its opening bracket stays full-width: so does it.
    assert normalize_text("写一首诗（第0问，编号813847339）", cfg) == "写一首诗（第0问，编号813847339）"
    assert normalize_text("见（图1）和（2）", cfg) == "见（图1）和（2）"
    assert normalize_text("x（a（中）b）", cfg) == "x(a（中）b)"  # nested: each pair decides as one
    assert normalize_text("abc）def（", cfg) == "abc)def("  # unpaired marks decide alone


def _fullwidth_by_definition(text: str) -> str:
    """The full-width rule written plainly, one mark at a time: letters and digits always fold; a mark folds
    when no CJK character touches it and the nearest character on each side that is neither a space nor a
    mark is not CJK; a bracket pair folds together or not at all."""
    import re

    cjk = re.compile("[\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                     "\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff5f-\uff65\U00020000-\U0003134f]")
    text = "".join(chr(ord(c) - 0xFEE0) if c.isalnum() and 0xFF10 <= ord(c) <= 0xFF5A else c for c in text)

    def mark(c: str) -> bool:
        return 0xFF01 <= ord(c) <= 0xFF5E and not c.isalnum()

    def near_cjk(i: int, step: int) -> bool:
        j = i + step
        while 0 <= j < len(text) and (text[j].isspace() or mark(text[j])):
            j += step
        return 0 <= j < len(text) and bool(cjk.match(text[j]))

    fold = {i for i, c in enumerate(text) if mark(c)
            and not (i > 0 and cjk.match(text[i - 1])) and not (i + 1 < len(text) and cjk.match(text[i + 1]))
            and not near_cjk(i, -1) and not near_cjk(i, 1)}
    pairs, stack = {"）": "（", "］": "［", "｝": "｛"}, []
    for i, c in enumerate(text):
        if c in "（［｛":
            stack.append(i)
        elif c in pairs and stack and text[stack[-1]] == pairs[c]:
            j = stack.pop()
            if (i in fold) != (j in fold):
                fold.discard(i)
                fold.discard(j)
    return "".join(chr(ord(c) - 0xFEE0) if i in fold else c for i, c in enumerate(text))


@pytest.mark.parametrize("nfkc", [False, True])
def test_fullwidth_matches_its_definition_on_random_text(nfkc):
    """The fast path (one scan for letters and lonely marks, a look-ahead past spaces and marks, partners
    found without a walk where no bracket stands between) against the rule written plainly."""
    import random

    from tuneforge.clean.normalize import _fullwidth

    alphabet = list("ab1 \t\n\u3000\u00a0\u2003\x1c中文字。、〈（）（）［］｛｝，！：；？＂＃％＆＇＊＋－．／＠＼＾＿｀～１Ａｚ")
    rng = random.Random(11)
    for _ in range(40_000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(16)))
        want = _fullwidth_by_definition(s)
        if nfkc:  # after NFKC no full-width letter or digit is left
            s = "".join(chr(ord(c) - 0xFEE0) if c in "１Ａｚ" else c for c in s)
        assert _fullwidth(s, alnum=not nfkc) == want, repr(s)


def test_default_is_nfc_and_nfkc_is_a_switch():
    assert normalize_text("x² ①", NormalizeConfig()) == "x² ①"
    assert normalize_text("x² ①，中文", NormalizeConfig(nfkc=True)) == "x2 1，中文"
    # NFC composes a decomposed e + combining acute; meaning is unchanged.
    assert normalize_text("cafe\u0301", NormalizeConfig()) == "café"


def test_control_and_zero_width_characters_are_removed():
    cfg = NormalizeConfig()
    assert normalize_text("a\u200bb\ufeffc\x07d\u00ade", cfg) == "abcde"
    assert normalize_text("中\u200d文", cfg) == "中文"
    family = "👨\u200d👩\u200d👧"
    assert normalize_text(family, cfg) == family  # ZWJ inside an emoji sequence is meaningful
    assert normalize_text("a\u200bb", NormalizeConfig(control_chars=False)) == "a\u200bb"


def test_whitespace_folding_keeps_indentation_and_code_blocks():
    cfg = NormalizeConfig()
    text = "第一行   有\u3000空格  \r\n\r\n\r\n\r\n  缩进  保留\n```python\ndef f():\n    return  1   \n```\n"
    assert normalize_text(text, cfg) == "第一行 有 空格\n\n  缩进 保留\n```python\ndef f():\n    return  1\n```"


def test_html_only_when_switched_on_and_only_real_markup():
    assert strip_html("Tom &amp; Jerry <b>bold</b><br>next<script>x()</script>") == "Tom & Jerry bold\nnext"
    assert strip_html("if a < b and c > d") == "if a < b and c > d"
    assert normalize_text("<p>hi</p>", NormalizeConfig()) == "<p>hi</p>"
    assert normalize_text("<p>hi</p><p>there</p>", NormalizeConfig(html=True)) == "hi\n\nthere"


# --- PII -----------------------------------------------------------------------------------------------------

def test_pii_typed_placeholders_and_counts():
    counts: dict[str, int] = {}
    text = ("联系我：13812345678 或 +86 139-1234-5678，邮箱 zhang.san@example.com；身份证 11010519491231002X，"
            "银行卡 6222 0212 3456 7890 128。Call (415) 555-0100.")
    out = scrub(text, PIIConfig(), counts)
    assert out == ("联系我：[PHONE] 或 [PHONE]，邮箱 [EMAIL]；身份证 [ID_CARD]，银行卡 [BANK_CARD]。Call [PHONE].")
    assert counts == {"email": 1, "id_card": 1, "bank_card": 1, "phone": 3}


def test_pii_leaves_look_alikes_alone():
    counts: dict[str, int] = {}
    text = "订单号 110105194912310021，卡号 6222021234567890123，2023年卖出 12345678901 件，价格 1999.00 元"
    assert scrub(text, PIIConfig(), counts) == text  # bad ID checksum, bad Luhn, 11 digits not a mobile prefix
    assert counts == {}


def test_pii_switches_and_custom_placeholder():
    counts: dict[str, int] = {}
    cfg = PIIConfig(email=False, placeholders={"phone": "<手机号>"})
    assert scrub("a@b.com 13812345678", cfg, counts) == "a@b.com <手机号>"


# --- filters -------------------------------------------------------------------------------------------------

def test_language_by_script_counting():
    assert language_of("今天天气很好，我们去公园散步吧。", 0.8)[0] == "zh"
    assert language_of("The weather is nice today, let's go for a walk.", 0.8)[0] == "en"
    assert language_of("用 Python 的 pandas 读取 CSV 文件然后 groupby 求和", 0.8)[0] == "mixed"
    assert language_of("Привет, как дела?", 0.8)[0] == "other"


def test_repeat_ratio():
    assert repeat_ratio("哈" * 200, 10) > 0.9
    assert repeat_ratio("中华人民共和国成立于一九四九年，首都是北京。北京是一座历史悠久的城市。", 10) == 0.0


def test_filter_reasons_are_key_then_detail(tmp_path: Path):
    (tmp_path / "bad.txt").write_text("# comment\n傻瓜\nidiot\n", encoding="utf-8")
    cfg = only(filters={"min_chars": 8, "max_chars": 400, "max_turn_chars": 300, "max_repeat_ngram_ratio": 0.5,
                        "language": {"allow": ["zh"]}, "badwords": "bad.txt", "drop_refusals": True})
    recs = [
        conv("你好", "", 0),                                        # empty answer
        conv("你好", "好", 1),                                      # 3 chars
        conv("写首诗", "长" * 350, 2),                               # one turn too long
        conv("重复一下", "哈哈哈哈哈哈哈哈哈哈" * 20, 3),            # repetition
        conv("Tell me a joke please", "Why did the chicken cross the road?", 4),  # language
        conv("评价一下他", "他是个傻瓜，别理他。", 5),               # badword
        conv("帮我黑进邻居的电脑", "抱歉，我无法帮助你做这件事。", 6),  # refusal
        conv("这道题的答案是什么？", "无。", 7),                     # placeholder
        conv("Is this idiotic?", "这个问题并不愚蠢，值得思考。", 8),  # 'idiot' is a word, not a substring
        conv("介绍一下长城", "长城是中国古代的军事防御工程，绵延上万里。", 9),
    ]
    res = run_clean(recs, cfg, recipe_dir=tmp_path)
    reasons = {r["raw"]["meta"]["index"]: r["reason"] for r in res.rejects}
    assert reasons[0] == "empty: assistant turn 2 is empty"
    assert reasons[1] == "too_short: 3 chars < min_chars 8"
    assert reasons[2].startswith("turn_too_long: assistant turn 2 has 350 chars > max_turn_chars 300")
    assert reasons[3].startswith("repetition: assistant turn 2")
    assert reasons[4].startswith("language: en")
    assert reasons[5] == "badword: assistant turn 2 contains '傻瓜'"
    assert reasons[6].startswith("refusal: response turn 2")
    assert reasons[7] == "placeholder: response turn 2 is '无。'"
    assert [r["meta"]["index"] for r in res.kept] == [8, 9]
    assert res.counts["filters"] == {"badword": 1, "empty": 1, "language": 1, "placeholder": 1, "refusal": 1,
                                     "repetition": 1, "too_short": 1, "turn_too_long": 1}
    assert all(r["stage"] == "clean" and r["raw"] == recs[r["raw"]["meta"]["index"]] for r in res.rejects)


def test_refusals_only_when_asked_and_only_in_responses():
    refusal = conv("你是谁", "作为一个AI语言模型，我没有名字。")
    assert len(run_clean([refusal], only()).kept) == 1
    assert len(run_clean([refusal], only(filters={"drop_refusals": True})).kept) == 0
    pref = new_record("preference", provenance("t", "p.json", None, 0),
                      prompt=[{"role": "user", "content": "帮我写一封辞职信"}],
                      chosen=[{"role": "assistant", "content": "好的，以下是一封辞职信的范文。"}],
                      rejected=[{"role": "assistant", "content": "I'm sorry, but I can't help with that."}])
    assert len(run_clean([pref], only(filters={"drop_refusals": True})).kept) == 1
    en = conv("hi", "I'm sorry, but as an AI language model I cannot browse the web.")
    assert run_clean([en], only(filters={"drop_refusals": True})).rejects[0]["reason"].startswith("refusal:")


def test_token_filters_use_the_named_tokenizer(smollm2_path: Path):
    cfg = only(filters={"min_tokens": 5, "min_turn_tokens": 2, "max_turn_tokens": 40,
                        "tokenizer": str(smollm2_path)})
    recs = [conv("hi", "ok", 0), conv("Explain gravity.", "Gravity pulls masses toward each other. " * 10, 1),
            conv("Explain gravity.", "Gravity is the force by which masses attract.", 2),
            conv("Explain gravity to a child in simple words.", "Yes", 3)]
    res = run_clean(recs, cfg)
    reasons = [r["reason"] for r in res.rejects]
    assert reasons[0].startswith("too_few_tokens: ") and reasons[0].endswith("< min_tokens 5")
    assert reasons[1].startswith("turn_too_many_tokens: assistant turn 2 has ")
    assert reasons[2] == "turn_too_few_tokens: assistant turn 2 has 1 tokens < min_turn_tokens 2"
    assert [r["meta"]["index"] for r in res.kept] == [2]


def test_missing_badwords_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(TuneforgeError, match="badwords: cannot read"):
        run_clean([conv("a", "b")], only(filters={"badwords": "nope.txt"}), recipe_dir=tmp_path)


# --- config --------------------------------------------------------------------------------------------------

def test_config_defaults_and_validation():
    cfg = CleanConfig.model_validate({})
    assert cfg.dedup.exact and cfg.dedup.near and cfg.dedup.threshold == 0.8
    assert not cfg.normalize.nfkc and not cfg.normalize.html and cfg.pii is not None
    assert cfg.filters.min_chars is None and not cfg.filters.drop_refusals
    with pytest.raises(ValidationError, match="treshold"):
        CleanConfig.model_validate({"dedup": {"treshold": 0.9}})
    with pytest.raises(ValidationError, match="need `tokenizer`"):
        CleanConfig.model_validate({"filters": {"max_tokens": 100}})
    with pytest.raises(ValidationError, match="greater than max_chars"):
        CleanConfig.model_validate({"filters": {"min_chars": 10, "max_chars": 5}})


# --- the run_clean contract ----------------------------------------------------------------------------------

def test_speaker_markers_at_line_starts_are_flagged_or_rejected_running_text_is_not():
    hh = conv("How do I bake bread?", "Mix flour and water.\nHuman: And then?\nAssistant: Bake it.", 0)
    zh = conv("用户：今天天气如何？", "晴天。", 1)  # a marker opening a turn's first line counts too
    fine = [conv("Who said 'User: admin' in the log?", "The Human: Evolution book quotes it.", 2),
            conv("写一段对话", "客户说：你好。\n店员说：欢迎光临。", 3)]
    flagged = run_clean([hh, zh, *fine], only())
    assert len(flagged.kept) == 4 and flagged.counts["flagged"] == {"speaker_marker": 2}
    flags = {r["meta"]["index"]: r["meta"].get("flags") for r in flagged.kept}
    assert flags[0] == ["speaker_marker: assistant turn 2 line 2 starts with 'Human:'"]
    assert flags[1] == ["speaker_marker: user turn 1 line 1 starts with '用户：'"]
    assert flags[2] is None and flags[3] is None
    assert flagged.kept[0]["messages"] == hh["messages"]  # flagged, never edited
    rejected = run_clean([hh, zh, *fine], only(filters={"speaker_markers": "reject"}))
    assert [r["reason"] for r in rejected.rejects] == [
        "speaker_marker: assistant turn 2 line 2 starts with 'Human:'",
        "speaker_marker: user turn 1 line 1 starts with '用户：'"]
    assert rejected.counts["filters"] == {"speaker_marker": 2} and len(rejected.kept) == 2
    off = run_clean([hh, zh], only(filters={"speaker_markers": "off"}))
    assert off.counts["flagged"] == {} and all("flags" not in r["meta"] for r in off.kept)


def test_hh_transcript_leftovers_are_counted(tmp_path: Path):
    """A real HH slice: the one harmless-base pair of the first 100 whose reply still holds a `Human:` line."""
    from tuneforge.ingest import SourceConfig, ingest

    data = Path(__file__).parent / "data" / "hh_rlhf"
    res = ingest([SourceConfig(name="hh", path=str(data / "harmless-base-test-first100.jsonl"), format="hh",
                               allow_outside=True)], tmp_path)
    out = run_clean(res.records, only())
    assert out.counts["flagged"] == {"speaker_marker": 1}
    (rec,) = [r for r in out.kept if r["meta"].get("flags")]
    assert "starts with 'Human:'" in rec["meta"]["flags"][0]


def test_run_clean_contract_order_kb_passthrough_no_mutation():
    kb = new_record("kb", provenance("hotels", "db.json", None, 0), row={"名称": "北京饭店", "电话": "13812345678"})
    recs = [conv("Ｈｅｌｌｏ　ｔｈｅｒｅ", "请拨打13812345678联系我们。", 0), kb, conv("你好", "你好！有什么可以帮你？", 1),
            new_record("text", provenance("t", "d.txt", 3, None), text="正文\u200b内容   很长。")]
    before = copy.deepcopy(recs)
    res = run_clean(recs, CleanConfig())
    assert recs == before  # inputs are never mutated
    assert [r["id"] for r in res.kept] == [r["id"] for r in recs]
    assert res.kept[1] is kb  # kb rows untouched, PII and all
    assert res.kept[0]["messages"][0] == {"role": "user", "content": "Hello there"}
    assert res.kept[0]["messages"][1]["content"] == "请拨打[PHONE]联系我们。"
    assert res.kept[0]["meta"]["pii"] == {"phone": 1}
    assert res.kept[0]["meta"]["ops"] == ["clean:normalize", "clean:pii"]
    assert res.kept[3]["text"] == "正文内容 很长。"
    assert res.counts["normalised"] == 2 and res.counts["pii"] == {"phone": 1}
    assert res.counts["passthrough"] == 1 and res.counts["input"] == 4 and res.counts["kept"] == 4


def test_disabled_passes_everything_through():
    recs = [conv("a", ""), conv("a", "")]
    res = run_clean(recs, CleanConfig(enabled=False))
    assert res.kept == recs and res.rejects == []


def test_same_input_same_output_bytes():
    recs = [conv(f"问题{i % 7}", f"答案是{i % 5}，请拨打1381234567{i % 10}。", i) for i in range(60)]
    a = run_clean(copy.deepcopy(recs), CleanConfig())
    b = run_clean(copy.deepcopy(recs), CleanConfig())
    dump = lambda r: dumps({"kept": r.kept, "rejects": r.rejects, "counts": r.counts, "clusters": r.clusters})  # noqa: E731
    assert dump(a) == dump(b)
    json.loads(dump(a))


def test_fold_gate_finds_everything_folding_changes():
    """`_fold` runs its substitutions only where its one-class gate matches: on random text of spaces, tabs,
    Unicode spaces, line breaks and letters the gate matches exactly where the substitutions change the text
    or the plain alternation it replaced (a non-U+0020 space, or a space before a space, a line end or the
    end) matches."""
    import random
    import re

    from tuneforge.clean import normalize as N

    reference = re.compile(r"[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]| (?: |\n|\Z)")
    rng = random.Random(7)
    alphabet = [" ", " ", "\t", "\n", "a", "中", "\u3000", "\u00a0", "\u2005", "\r", "x"]
    for _ in range(50_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 9)))
        gate = N._NEEDS_FOLD.search(text) is not None
        assert gate == (reference.search(text) is not None), repr(text)
        if not gate:
            assert N._TRAILING.sub("", N._INNER_SPACES.sub(" ", text)) == text, repr(text)
